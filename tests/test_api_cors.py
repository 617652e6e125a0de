"""Browser apps on other origins (LDM_CORS_ORIGINS) against real uvicorn and Redis: preflights
and answers, errors included, carry CORS headers for an allowed origin only, none by default;
and a page on another origin in headless Chromium submits a job with fetch()."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_harness import KEY_A, ApiServer, auth, serve
from tests.conftest import RedisServer
from tests.test_playground_browser import browser, needs_browser

__all__ = ["browser"]  # a fixture
DB = 9


def asking(origin: str) -> dict[str, str]:
    """A preflight's headers: may `origin` POST with our headers?"""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }


@pytest.fixture(scope="module")
def app_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A static page served from its own origin (another port than the API's)."""
    root = tmp_path_factory.mktemp("app")
    (root / "index.html").write_text("<!doctype html><title>app</title>")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


@pytest.fixture(scope="module")
def open_api(redis_server: RedisServer, app_origin: str) -> Iterator[ApiServer]:
    origins = f"https://other.example, {app_origin}/"  # a trailing slash is forgiven
    yield from serve(redis_server.fresh_db(DB), {"LDM_CORS_ORIGINS": origins})


@pytest.fixture(scope="module")
def closed_api(redis_server: RedisServer) -> Iterator[ApiServer]:
    yield from serve(redis_server.fresh_db(DB))


def test_an_allowed_origin_gets_cors_headers_on_preflights_answers_and_errors(
    open_api: ApiServer, app_origin: str
) -> None:
    app = app_origin
    with open_api.client(None) as client:
        preflight = client.options("/v1/txt2img", headers=asking(app))
        posted = client.post("/v1/txt2img", json={"prompt": "a red circle"},
                             headers={"Origin": app, **auth(KEY_A)})  # fmt: skip
        refused = client.post("/v1/txt2img", json={"prompt": "x"}, headers={"Origin": app})
        stranger = client.options("/v1/txt2img", headers=asking("https://evil.example"))
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == app
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= set(allowed.split(", "))
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert posted.status_code == 202 and posted.headers["access-control-allow-origin"] == app
    assert "location" in posted.headers["access-control-expose-headers"].lower()
    assert refused.status_code == 401  # the app can read why
    assert refused.headers["access-control-allow-origin"] == app
    assert stranger.status_code == 400
    assert "access-control-allow-origin" not in stranger.headers


def test_no_cors_headers_unless_configured(closed_api: ApiServer, app_origin: str) -> None:
    app = app_origin
    with closed_api.client() as client:
        preflight = client.options("/v1/txt2img", headers=asking(app))
        posted = client.post("/v1/txt2img", json={"prompt": "x"}, headers={"Origin": app})
    assert posted.status_code == 202
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in posted.headers


SUBMIT_JS = """
const [api, key, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(api + "/v1/txt2img", {method: "POST", body: JSON.stringify({prompt: "a red circle"}),
  headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json",
            "Idempotency-Key": "browser-" + Math.random()}})
  .then(r => done({status: r.status, location: r.headers.get("Location")}))
  .catch(e => done({error: String(e)}));
"""


@pytest.mark.slow
@needs_browser
def test_a_page_on_another_origin_submits_with_fetch(
    open_api: ApiServer, closed_api: ApiServer, app_origin: str, browser: Any
) -> None:
    browser.get(app_origin + "/index.html")
    browser.set_script_timeout(30)
    allowed = browser.execute_async_script(SUBMIT_JS, open_api.url, KEY_A)
    blocked = browser.execute_async_script(SUBMIT_JS, closed_api.url, KEY_A)
    assert allowed["status"] == 202 and allowed["location"].startswith("/v1/jobs/"), allowed
    assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
