"""POST /v1/txt2img takes JSON types as they are: no bools for numbers, no numeric strings,
no blank prompts (422 naming the field, no job created)."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.store import JobStore
from tests.api_harness import ApiServer, api_fixture, store_fixture  # noqa: F401

REJECTED = [
    ({"steps": True}, "steps"),
    ({"steps": "5"}, "steps"),
    ({"steps": 5.5}, "steps"),
    ({"width": "64"}, "width"),
    ({"num_images": True}, "num_images"),
    ({"seed": "7"}, "seed"),
    ({"seed": False}, "seed"),
    ({"guidance_scale": "7"}, "guidance_scale"),
    ({"guidance_scale": True}, "guidance_scale"),
    ({"eta": "0.5"}, "eta"),
    ({"karras": 1}, "karras"),
    ({"karras": "true"}, "karras"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "\n\t"}, "prompt"),
    ({"prompt": 5}, "prompt"),
]


@pytest.mark.parametrize(("change", "field"), REJECTED, ids=[repr(c) for c, _ in REJECTED])
def test_wrong_json_types_are_422_naming_the_field(
    api: ApiServer, store: JobStore, change: dict[str, Any], field: str
) -> None:
    with api.client() as client:
        reply = client.post("/v1/txt2img", json={"prompt": "a cat", **change})
    assert reply.status_code == 422, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert [error["field"] for error in problem["errors"]] == [field]
    assert problem["detail"].startswith(f"{field}: ")
    assert store.queue("default").count == 0 and not store.redis.keys("ldm:job:*")


def test_json_numbers_count_as_json_schema_says(api: ApiServer, store: JobStore) -> None:
    """7 is a number, 5.0 an integer (JSON Schema); enums are JSON strings."""
    body = {"prompt": " a cat ", "guidance_scale": 7, "eta": 0, "sampler": "ddim", "karras": True}
    body |= {"steps": 5.0, "width": 64.0}
    with api.client() as client:
        reply = client.post("/v1/txt2img", json=body)
    assert reply.status_code == 202, reply.text
    request = reply.json()["request"]
    assert request["guidance_scale"] == 7.0 and request["eta"] == 0.0 and request["karras"] is True
    assert request["steps"] == 5 and request["width"] == 64
    assert request["sampler"] == "ddim" and request["prompt"] == " a cat "
    assert store.queue("default").count == 1
