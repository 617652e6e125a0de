"""POST /v1/img2img and /v1/inpaint at the edge: what is accepted (JSON and multipart), how the
job is sized and stored, and every bad upload answered 4xx with nothing queued."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from jobs.store import JobStore
from tests.api_harness import ApiServer, serve, store_fixture  # noqa: F401
from tests.conftest import RedisServer

ENV = {"LDM_MIN_SIZE": "32", "LDM_MAX_PIXELS": str(256 * 256), "LDM_MAX_SIZE": "256",
       "LDM_MAX_IMAGE_BODY_BYTES": str(200_000), "LDM_MAX_QUEUE": "1000"}  # fmt: skip


@pytest.fixture()
def api(redis_server: RedisServer, redis_url: str) -> Iterator[ApiServer]:
    yield from serve(redis_url, ENV)


def png(width: int, height: int, mode: str = "RGB", color: object = (200, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_422(reply, field: str) -> None:
    assert reply.status_code == 422, reply.text
    problem = reply.json()
    assert any(error["field"] == field for error in problem["errors"]), problem


def test_img2img_json_takes_the_init_images_size_and_stores_the_upload(
    api: ApiServer, store: JobStore
) -> None:
    upload = png(100, 75)
    with api.client() as client:
        reply = client.post("/v1/img2img", json={"prompt": "a fox", "init_image": b64(upload)})
    assert reply.status_code == 202, reply.text
    request = reply.json()["request"]
    assert (request["task"], request["width"], request["height"]) == ("img2img", 96, 72)
    assert request["strength"] == 0.75  # img2img's default
    assert store.get_inputs(reply.json()["id"], ["init_image", "mask_image"]) == {
        "init_image": upload
    }


def test_inpaint_multipart_files_and_form_fields(api: ApiServer, store: JobStore) -> None:
    files = {"init_image": ("a.png", png(64, 48), "image/png"),
             "mask_image": ("m.png", png(64, 48, "L", 255), "image/png")}  # fmt: skip
    form = {"prompt": "a fox", "guidance_scale": "5", "steps": "12", "seed": "7", "karras": "true"}
    with api.client() as client:
        reply = client.post("/v1/inpaint", data=form, files=files)
        bad = client.post("/v1/inpaint", data={**form, "guidance_scale": "lots"}, files=files)
    assert reply.status_code == 202, reply.text
    request = reply.json()["request"]
    assert (request["task"], request["width"], request["height"]) == ("inpaint", 64, 48)
    assert (request["guidance_scale"], request["steps"], request["seed"]) == (5.0, 12, 7)
    assert request["karras"] is True and request["strength"] == 1.0
    assert_422(bad, "guidance_scale")
    assert store.queue("default").count == 1


@pytest.mark.parametrize(
    ("route", "fields", "field"),
    [
        ("/v1/img2img", {"init_image": "not base64!"}, "init_image"),
        ("/v1/img2img", {"init_image": b64(b"GIF89a not really")}, "init_image"),
        ("/v1/img2img", {"init_image": b64(png(300, 300))}, "init_image"),  # > LDM_MAX_PIXELS
        ("/v1/img2img", {"init_image": b64(png(64, 64)), "strength": 1.5}, "strength"),
        ("/v1/img2img", {"init_image": b64(png(64, 64)), "strength": 0}, "strength"),
        # int(steps x strength) = 0 denoising steps: was queued, then failed in the worker
        ("/v1/img2img", {"init_image": b64(png(64, 64)), "strength": 0.01, "steps": 4}, "strength"),
        ("/v1/img2img", {"init_image": b64(png(64, 64)), "steps": 1}, "strength"),  # 0.75 x 1
        ("/v1/img2img", {"init_image": b64(png(64, 64)), "width": 512}, "width"),
        ("/v1/img2img", {"init_image": b64(png(20, 20))}, "init_image"),  # below LDM_MIN_SIZE
        ("/v1/inpaint", {"init_image": b64(png(64, 64))}, "mask_image"),
        (
            "/v1/inpaint",
            {"init_image": b64(png(64, 64)), "mask_image": b64(png(32, 64, "L", 255))},
            "mask_image",
        ),  # fmt: skip
    ],
)
def test_bad_uploads_are_422_naming_the_field_and_queue_nothing(
    api: ApiServer, store: JobStore, route: str, fields: dict, field: str
) -> None:
    with api.client() as client:
        reply = client.post(route, json={"prompt": "a fox", **fields})
    assert_422(reply, field)
    assert store.queue("default").count == 0


def test_image_routes_have_their_own_body_limit(api: ApiServer, store: JobStore) -> None:
    """LDM_MAX_IMAGE_BODY_BYTES for the image routes; txt2img keeps LDM_MAX_BODY_BYTES (64 KiB)."""
    noisy = Image.effect_noise((160, 160), 100).convert("RGB")  # compresses badly
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    body = {"prompt": "a fox", "init_image": b64(buffer.getvalue())}
    assert 64 * 1024 < len(body["init_image"]) < 200_000
    with api.client() as client:
        big_json = client.post("/v1/txt2img", json={"prompt": "x" * 70_000})
        fits = client.post("/v1/img2img", json=body)
        too_big = client.post("/v1/img2img", json={"prompt": "a", "init_image": "A" * 250_000})
    assert big_json.status_code == 413
    assert fits.status_code == 202, fits.text
    assert too_big.status_code == 413
    assert store.queue("default").count == 1


def test_a_task_the_model_cannot_run_is_422_naming_the_models_that_can(
    api: ApiServer, store: JobStore
) -> None:
    store.fleet.publish_tasks("default", ["inpaint"])  # as an inpainting model's worker says
    with api.client() as client:
        refused = client.post("/v1/img2img", json={"prompt": "a", "init_image": b64(png(64, 64))})
        listed = client.get("/v1/models").json()["data"]
    assert_422(refused, "model")
    assert "cannot run img2img" in refused.json()["detail"]
    assert listed[0]["tasks"] == ["inpaint"]
    assert store.queue("default").count == 0
