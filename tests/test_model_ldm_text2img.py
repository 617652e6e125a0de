"""The paper's own text-to-image model, LDM-KL-8-G (Sec. 4.3: cross-attention on a transformer
trained from scratch over BERT wordpieces), against diffusers' LDMTextToImagePipeline on a tiny
random model in its folder layout (`bert/`, `tokenizer/`, `unet/`, `vqvae/`): same weights, prompt
and seeds give the same images, in the engine, through `ldm-serve generate` and over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.engine import BatchEngine
from model.pipeline import load_pipeline
from model.txt2img import txt2img
from testkit.tiny_paper_models import build_tiny_ldm_text2img
from tests.api_harness import ApiServer, serve
from tests.conftest import REPO, RedisServer
from tests.test_model_parity import assert_close, scheduler_for
from tests.test_parity_processes import served_image
from tests.worker_harness import WorkerProcess

PROMPT, SIZE, STEPS, GUIDANCE = "a red cat sat on the mat", 64, 8, 5.0
DB = 8


@pytest.fixture(scope="module")
def ldm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ldm_text2img(tmp_path_factory.mktemp("ldm") / "ldm-text2im")


@cache
def reference(path: Path):  # noqa: ANN201 - diffusers is imported lazily (test-only)
    from diffusers import LDMTextToImagePipeline

    pipe = LDMTextToImagePipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(path: Path, sampler: str, seeds: list[int], prompt: str = PROMPT) -> np.ndarray:
    """diffusers' pipeline never scales the model input, so only samplers whose schedulers do
    not either (DDIM, DPM-Solver++) are comparable; its unconditional prompt is the empty one."""
    pipe = reference(path)
    pipe.scheduler = scheduler_for(sampler, pipe.scheduler.config)
    images = [
        pipe(prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
             generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
        for seed in seeds
    ]  # fmt: skip
    return (np.stack(images) * 255).round().astype(np.uint8)


def ours(path: Path, sampler: str, seeds: list[int], prompt: str = PROMPT) -> np.ndarray:
    engine = BatchEngine(load_pipeline(path))
    images = txt2img(engine, [prompt] * len(seeds), seeds=seeds, width=SIZE, height=SIZE,
                     steps=STEPS, guidance_scale=GUIDANCE, sampler=sampler)  # fmt: skip
    return np.stack([np.asarray(image) for image in images])


@pytest.mark.parametrize("sampler", ["ddim", pytest.param("dpmpp_2m", marks=pytest.mark.slow)])
def test_ldm_text2img_matches_diffusers(ldm: Path, sampler: str) -> None:
    assert_close(ours(ldm, sampler, [3, 4]), theirs(ldm, sampler, [3, 4]))


def test_long_prompts_are_truncated_as_the_paper_model_tokenizes(ldm: Path) -> None:
    """One 77-token window: words past it change nothing (diffusers truncates the same way)."""
    long = " ".join(["a red cat"] * 40)
    image = ours(ldm, "ddim", [5], long)
    assert_close(image, theirs(ldm, "ddim", [5], long))
    assert np.array_equal(image, ours(ldm, "ddim", [5], long + " on the mat"))


def test_an_image_is_the_same_alone_or_batched(ldm: Path) -> None:
    engine = BatchEngine(load_pipeline(ldm))
    alone = txt2img(engine, [PROMPT], seeds=[7], width=SIZE, height=SIZE, steps=STEPS)
    batch = txt2img(engine, ["a blue dog", PROMPT, "a photo"], seeds=[1, 7, 2], width=SIZE,
                    height=SIZE, steps=STEPS)  # fmt: skip
    assert np.array_equal(np.asarray(batch[1]), np.asarray(alone[0]))


@pytest.mark.slow
def test_cli_generate_matches_diffusers(ldm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "generate", "--model", str(ldm), "--prompt", PROMPT,
         "--seed", "3", "--steps", str(STEPS), "--guidance", str(GUIDANCE), "--width",
         str(SIZE), "--height", str(SIZE), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_close(np.asarray(Image.open(out).convert("RGB"))[None], theirs(ldm, "ddim", [3]))


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, ldm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    env = {"LDM_MODEL_NAME": "ldm-kl-8-g", "LDM_DEFAULT_SIZE": str(SIZE)}
    worker = WorkerProcess(url, ldm, tmp_path_factory.mktemp("ldm-worker"), env).start()
    try:
        yield from serve(url, {"LDM_MODEL_NAME": "ldm-kl-8-g", "LDM_MIN_SIZE": "32"})
    finally:
        worker.stop()


@pytest.mark.slow
def test_http_txt2img_matches_diffusers(stack: ApiServer, ldm: Path) -> None:
    with stack.client() as client:
        reply = client.post("/v1/txt2img", json={
            "prompt": PROMPT, "seed": 4, "steps": STEPS, "guidance_scale": GUIDANCE,
            "width": SIZE, "height": SIZE, "sampler": "dpmpp_2m",
        })  # fmt: skip
        assert reply.status_code == 202, reply.text
        assert_close(served_image(client, reply.json()["id"])[None],
                     theirs(ldm, "dpmpp_2m", [4]))  # fmt: skip
        models = client.get("/v1/models").json()["data"]
    assert [(m["name"], m["tasks"]) for m in models] == [
        ("ldm-kl-8-g", ["txt2img", "img2img", "inpaint"])
    ]
