"""GET /: the browser playground, static HTML, CSS and JS that call the native API from the page
(no build step, nothing from another origin). Kept out of the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import Problem

STATIC = Path(__file__).resolve().parent.parent / "static"
# Everything from this origin; images also from blob: (fetched with the key) and data: (uploads).
CSP = "default-src 'self'; img-src 'self' blob: data:"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidated by ETag / Last-Modified: upgrades show at once
}
# Starlette adds "; charset=utf-8" to text/* types. The scripts are ES modules (playground.js
# imports api.js and sample.js), which browsers run only when served with a JavaScript type.
ASSETS = {
    "playground.js": "text/javascript",
    "api.js": "text/javascript",
    "sample.js": "text/javascript",
    "playground.css": "text/css",
}

router = APIRouter(include_in_schema=False)


def _static(name: str, media_type: str) -> FileResponse:
    path = STATIC / name
    if not path.is_file():  # an install without the package data
        raise Problem(404, "not-found", "Not found", f"the playground's {name} is not installed")
    return FileResponse(path, media_type=media_type, headers=HEADERS)


@router.get("/")
def index() -> FileResponse:
    """The playground page."""
    return _static("index.html", "text/html")


@router.get("/playground/{name}")
def asset(name: str) -> FileResponse:
    """The page's scripts and stylesheet; nothing else under /playground."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise Problem(404, "not-found", "Not found", f"no playground asset {name!r}")
    return _static(name, media_type)
