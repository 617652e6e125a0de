"""POST /v1/sample through uvicorn, Redis and the batching worker, for the paper's models
without text: a class-conditional one (class by index or by name) against the independent
reference of tests/test_model_ldm_classcond.py, and an unconditional one against diffusers'
LDMPipeline; what the API refuses, and what /v1/models says of each kind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testkit.tiny_paper_models import build_tiny_ldm_classcond, build_tiny_ldm_uncond
from tests import test_model_ldm_classcond as classcond
from tests import test_model_ldm_uncond as uncond
from tests.api_harness import KEY_A, ApiServer, serve
from tests.conftest import REPO, RedisServer
from tests.test_model_parity import assert_close
from tests.test_parity_processes import served_image
from tests.worker_harness import WorkerProcess

pytestmark = pytest.mark.slow
COMMON = {"steps": classcond.STEPS, "sampler": "ddim"}


def stack_for(
    redis_server: RedisServer, db: int, name: str, model: Path, logs: Path
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(db)
    worker = WorkerProcess(url, model, logs, {"LDM_MODEL_NAME": name}).start()
    try:
        yield from serve(url, {"LDM_MODEL_NAME": name, "LDM_MIN_SIZE": "32"})
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def cin_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cin") / "cin"
    return build_tiny_ldm_classcond(path, classes=classcond.CLASSES)


@pytest.fixture(scope="module")
def cin(
    redis_server: RedisServer, cin_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from stack_for(redis_server, 11, "cin", cin_model, tmp_path_factory.mktemp("w"))


@pytest.fixture(scope="module")
def celeba_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ldm_uncond(tmp_path_factory.mktemp("celeba") / "celeba")


@pytest.fixture(scope="module")
def celeba(
    redis_server: RedisServer, celeba_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from stack_for(redis_server, 12, "celeba", celeba_model, tmp_path_factory.mktemp("w"))


def test_class_conditional_sampling_over_http_matches_the_reference(
    cin: ApiServer, cin_model: Path
) -> None:
    """A class by name and by index; the size is the model's own (UNet sample size x f)."""
    with cin.client() as client:
        for label, index, scale in (("Class 2", 2, 3.0), (7, 7, 1.0)):
            body = {**COMMON, "class_label": label, "seed": 5, "guidance_scale": scale}
            reply = client.post("/v1/sample", json=body)
            assert reply.status_code == 202, reply.text
            request = reply.json()["request"]
            assert (request["task"], request["class_label"]) == ("sample", index)
            assert (request["width"], request["height"]) == (classcond.SIZE, classcond.SIZE)
            ours = served_image(client, reply.json()["id"])
            assert_close(ours[None], classcond.reference(cin_model, index, 5, scale)[None])


def test_unconditional_sampling_over_http_matches_diffusers(
    celeba: ApiServer, celeba_model: Path
) -> None:
    with celeba.client() as client:
        reply = client.post("/v1/sample", json={**COMMON, "seed": 3})
        assert reply.status_code == 202, reply.text
        assert reply.json()["request"]["width"] == uncond.SIZE  # the model's own size
        ours = served_image(client, reply.json()["id"])
    assert_close(ours[None], uncond.theirs(celeba_model, "ddim", [3]))


def test_the_api_refuses_what_sampling_cannot_do(cin: ApiServer, celeba: ApiServer) -> None:
    """422 naming the field, with near matches for a misspelt class; nothing is queued."""
    cases = [
        (cin, {"class_label": "clas 3"}, "near matches: 'class 3' (3)"),
        (cin, {"class_label": 10}, "10 is outside 0..9"),
        (cin, {}, "is class-conditional: give a class"),
        (cin, {"class_label": True}, "class_label"),
        (cin, {"class_label": 1, "prompt": "a goldfish"}, "samples without text"),
        (celeba, {"class_label": 1}, "is unconditional: it takes no class"),
    ]
    for stack, body, message in cases:
        with stack.client() as client:
            reply = client.post("/v1/sample", json={**COMMON, **body})
            assert reply.status_code == 422, (body, reply.text)
            assert message in reply.text, (body, reply.text)
    with cin.client() as client:
        reply = client.post("/v1/txt2img", json={"prompt": "a goldfish", "width": 64})
        assert reply.status_code == 422 and "(it runs: sample)" in reply.text, reply.text


def test_models_say_what_each_kind_accepts(cin: ApiServer, celeba: ApiServer) -> None:
    with cin.client() as client:
        (info,) = client.get("/v1/models").json()["data"]
        names = client.get("/v1/models/cin/classes").json()["data"]
    assert (info["tasks"], info["native_size"], info["num_classes"]) == (
        ["sample"], classcond.SIZE, classcond.CLASSES)  # fmt: skip
    assert names == [f"class {i}" for i in range(classcond.CLASSES)]
    with celeba.client() as client:
        (info,) = client.get("/v1/models").json()["data"]
        assert client.get("/v1/models/celeba/classes").status_code == 404
    assert (info["tasks"], info["num_classes"]) == (["sample"], None)


def test_cli_client_samples_a_class(cin: ApiServer, cin_model: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "client", "sample", "--url", cin.url, "--api-key",
         KEY_A, "--class-label", "class 4", "--seed", "5", "--steps", str(classcond.STEPS),
         "--sampler", "ddim", "--guidance-scale", "3", "-o", str(tmp_path / "out.png")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert_close(ours[None], classcond.reference(cin_model, 4, 5, 3.0)[None])


@pytest.fixture(scope="module")
def cin_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1000-class cin256-layout model as a diffusers-style folder and as CompVis' model zoo
    has it (model.ckpt + its YAML), converted by `ldm-serve convert`'s code."""
    from cli.main import main
    from testkit.tiny_compvis import build_compvis_classcond

    root = tmp_path_factory.mktemp("zoo")
    folder = build_compvis_classcond(root / "folder", classes=1000)
    ckpt = root / "cin256" / "model.ckpt"
    assert main(["convert", str(folder), str(ckpt), "--dtype", "float32"]) == 0
    return folder, ckpt


def test_a_compvis_checkpoint_serves_imagenet_classes_by_name(
    redis_server: RedisServer, cin_zoo: tuple[Path, Path], tmp_path: Path
) -> None:
    """The worker loads the .ckpt + YAML; "goldfish" is ImageNet's class 1; the image is the one
    the folder form draws (whose parity with the reference is tests/test_model_ldm_classcond)."""
    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.txt2img import run

    folder, ckpt = cin_zoo
    body = {**COMMON, "class_label": "goldfish", "seed": 5, "guidance_scale": 3.0}
    for api in stack_for(redis_server, 13, "cin256", ckpt, tmp_path):
        with api.client() as client:
            reply = client.post("/v1/sample", json=body)
            assert reply.status_code == 202, reply.text
            assert reply.json()["request"]["class_label"] == 1
            served = served_image(client, reply.json()["id"])
            (info,) = client.get("/v1/models").json()["data"]
            names = client.get("/v1/models/cin256/classes").json()["data"]
            crane = client.post("/v1/sample", json={**body, "class_label": "crane"})
    assert info["num_classes"] == 1000 and names[1].startswith("goldfish")
    assert crane.status_code == 422 and "134: 'crane'; 517: 'crane'" in crane.text, crane.text
    spec = classcond.spec(1, 5, 3.0)
    expected = np.asarray(run(BatchEngine(load_pipeline(folder)), [spec])[0])
    assert_close(served[None], expected[None])
