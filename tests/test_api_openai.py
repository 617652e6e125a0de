"""The OpenAI Images API dialect with the real `openai` SDK as the client, against uvicorn, Redis
and a batching worker: generate, edit and create_variation give the native API's images for the
same seed and settings, and errors raise the SDK's usual exceptions."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import numpy as np
import openai
import pytest
import redis
from PIL import Image

from jobs import keys
from service.signed_urls import signature, url_key
from tests.api_harness import KEY_A, ApiServer, encode_png, native_first_image, serve
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, tiny_model

__all__ = ["tiny_model"]
pytestmark = pytest.mark.slow
DB = 12
SIZE = 32
NATIVE = {"seed": 9, "steps": 4, "guidance_scale": 5.0, "sampler": "ddim"}


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    worker = WorkerProcess(url, tiny_model, tmp_path_factory.mktemp("openai"), {}).start()
    try:
        yield from serve(url, {"LDM_MIN_SIZE": "32", "LDM_DEFAULT_SIZE": "32",
                               "LDM_SYNC_TIMEOUT": "60"})  # fmt: skip
    finally:
        worker.stop()


@pytest.fixture()
def client(stack: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY_A, max_retries=0, timeout=90)


def init_image() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return Image.fromarray(np.stack([x * 8, y * 8, (x + y) * 4], -1).clip(0, 255).astype(np.uint8))


def transparent_left_mask() -> Image.Image:
    """OpenAI's convention: fully transparent pixels are the area to repaint."""
    alpha = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    alpha[:, : SIZE // 2] = 0
    rgba = np.dstack([np.zeros((SIZE, SIZE, 3), np.uint8), alpha])
    return Image.fromarray(rgba, "RGBA")


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def native(stack: ApiServer, route: str, **kwargs: object) -> np.ndarray:
    """The same job through the native API: first image's pixels."""
    return decoded(native_first_image(stack, route, **kwargs))


def prompt_tokens(model: Path, prompt: str) -> int:
    """What the CLIP text encoder reads: the prompt's tokens plus BOS and EOS (one window)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer", local_files_only=True)
    return len(tokenizer(prompt).input_ids)


def test_generate_equals_the_native_txt2img(
    stack: ApiServer, client: openai.OpenAI, tiny_model: Path
) -> None:
    result = client.images.generate(prompt="a red square", n=2, size=f"{SIZE}x{SIZE}",
                                    response_format="b64_json", extra_body=NATIVE)  # fmt: skip
    assert len(result.data) == 2 and result.created > 0
    # usage: prompt + empty negative prompt (guided), and two 16x16 latents (the VAE's f is 2)
    text = prompt_tokens(tiny_model, "a red square") + prompt_tokens(tiny_model, "")
    assert result.usage is not None
    assert result.usage.input_tokens_details.text_tokens == text
    assert (result.usage.input_tokens, result.usage.output_tokens) == (text, 2 * 16 * 16)
    assert result.usage.total_tokens == text + 2 * 16 * 16
    ours = decoded(base64.b64decode(result.data[0].b64_json or ""))
    theirs = native(stack, "/v1/txt2img", json={"prompt": "a red square", "width": SIZE,
                                                "height": SIZE, **NATIVE})  # fmt: skip
    assert np.array_equal(ours, theirs)


def test_url_images_are_signed_and_need_no_key(stack: ApiServer, client: openai.OpenAI) -> None:
    """As OpenAI's: a plain GET of the URL (requests.get, <img src>) reads the image until it
    expires; the image route asked for the API key, so every such GET was a 401."""
    urls = client.images.generate(prompt="a red square", n=2, size=f"{SIZE}x{SIZE}",
                                  response_format="url", extra_body=NATIVE)  # fmt: skip
    first = urls.data[0].url or ""
    fetched = httpx.get(first)  # no Authorization header
    assert fetched.status_code == 200, fetched.text
    b64 = client.images.generate(prompt="a red square", size=f"{SIZE}x{SIZE}",
                                 response_format="b64_json", extra_body=NATIVE)  # fmt: skip
    assert fetched.content == base64.b64decode(b64.data[0].b64_json or "")
    assert httpx.get(urls.data[1].url or "").status_code == 200
    path, _, query = first.partition("?")
    params = dict(parse_qsl(query))
    job_id = path.split("/")[-3]
    server_key = redis.Redis.from_url(stack.redis_url).get(keys.webhook_server_secret())
    assert isinstance(server_key, bytes)
    key = url_key(server_key)
    assert params["signature"] == signature(key, job_id, 0, int(params["expires"]))
    assert 50 < int(params["expires"]) - time.time() <= 60  # LDM_RESULT_TTL here, under the hour
    past, later = int(time.time()) - 1, int(params["expires"]) + 60
    forged = {
        "another image": f"{path[:-1]}1?{query}",
        "a later expiry": f"{path}?expires={later}&signature={params['signature']}",
        "expired, though signed": f"{path}?expires={past}&signature="
                                  f"{signature(key, job_id, 0, past)}",
        "no signature": f"{path}?expires={params['expires']}",
    }  # fmt: skip
    for what, url in forged.items():
        refused = httpx.get(url)
        assert refused.status_code == 401, what
        assert refused.json()["detail"] == "the image URL's signature is invalid or expired"
    assert httpx.get(path).status_code == 401  # the route without a signature: the key, as ever


def test_edit_inpaints_the_transparent_area(stack: ApiServer, client: openai.OpenAI) -> None:
    init = encode_png(init_image())
    result = client.images.edit(image=("init.png", init, "image/png"), prompt="a blue circle",
                                mask=("mask.png", encode_png(transparent_left_mask()), "image/png"),
                                response_format="b64_json", extra_body=NATIVE)  # fmt: skip
    ours = decoded(base64.b64decode(result.data[0].b64_json or ""))
    white_left = np.zeros((SIZE, SIZE), np.uint8)
    white_left[:, : SIZE // 2] = 255
    theirs = native(stack, "/v1/inpaint", data={k: str(v) for k, v in NATIVE.items()} | {
        "prompt": "a blue circle"}, files={"init_image": ("i.png", init, "image/png"),
        "mask_image": ("m.png", encode_png(Image.fromarray(white_left)), "image/png")})  # fmt: skip
    assert np.array_equal(ours, theirs)
    kept = np.asarray(init_image()).astype(np.int16)[:, SIZE // 2 :]
    assert np.array_equal(ours[:, SIZE // 2 :], kept)  # outside the mask: the image, exactly
    assert result.usage is not None  # the image and the mask, one latent each
    assert result.usage.input_tokens_details.image_tokens == 2 * 16 * 16


def test_variation_is_img2img_with_an_empty_prompt(client: openai.OpenAI) -> None:
    image = ("init.png", encode_png(init_image()), "image/png")
    result = client.images.create_variation(image=image, n=1, response_format="b64_json",
                                            extra_body=NATIVE)  # fmt: skip
    ours = decoded(base64.b64decode(result.data[0].b64_json or ""))
    assert ours.shape == (SIZE, SIZE, 3)
    assert np.abs(ours - np.asarray(init_image()).astype(np.int16)).mean() > 0.5  # it changed


def test_errors_raise_the_sdks_exceptions(stack: ApiServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="a red square", size="huge")
    assert bad.value.body is not None and "size" in str(bad.value.body)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="", size=f"{SIZE}x{SIZE}")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0).images.generate(
            prompt="a red square"
        )


@pytest.mark.parametrize(
    ("action", "sent", "param", "message"),
    [
        ("generate", {"size": "36x32"}, "size", "size: width: Input should be a multiple of 8"),
        ("generate", {"size": "2048x2048"}, "size", "size: width x height = 4194304 pixels"),
        ("generate", {"n": 9}, "n", "n: Input should be less than or equal to"),
        ("create_variation", {"image": b"not a png"}, "image", "image: "),
        ("edit", {"mask": b"not a png"}, "mask", "mask: "),
        ("generate", {"background": "transparent"}, "background", "background: transparent is not"),
        ("edit", {"background": "transparent"}, "background", "background: transparent is not"),
    ],
)
def test_a_400_names_the_openai_param_sent(
    client: openai.OpenAI, action: str, sent: dict, param: str, message: str
) -> None:
    """Not the native field it maps to (width, num_images, init_image, mask_image)."""
    arguments: dict = {"prompt": "a red square"} if action != "create_variation" else {}
    if action != "generate":
        arguments["image"] = ("i.png", encode_png(init_image()), "image/png")
    arguments |= {name: ("x.png", value) if isinstance(value, bytes) else value
                  for name, value in sent.items()}  # fmt: skip
    with pytest.raises(openai.BadRequestError) as bad:
        getattr(client.images, action)(**arguments)
    error = bad.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["message"].startswith(message), error
