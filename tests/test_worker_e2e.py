"""End to end over HTTP: real uvicorn API, real batching worker, tiny model, real Redis."""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from rq import Queue
from rq.serializers import JSONSerializer

from tests.api_harness import KEY_A, ApiServer, encode_png, native_first_image, serve
from tests.conftest import REPO, RedisServer
from tests.worker_harness import WorkerProcess, tiny_model

__all__ = ["tiny_model"]
DB = 6
API_ENV = {"LDM_MIN_SIZE": "32", "LDM_DEFAULT_SIZE": "32", "LDM_MAX_IMAGES": "2"}


@pytest.fixture(scope="module")
def url(redis_server: RedisServer) -> str:
    return redis_server.fresh_db(DB)


@pytest.fixture(scope="module")
def api(url: str) -> Iterator[ApiServer]:
    yield from serve(url, API_ENV)


@pytest.fixture(scope="module")
def worker(
    url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(url, tiny_model, tmp_path_factory.mktemp("e2e"), {})
    process.start()
    yield process
    process.stop()


def wait(client, job_id: str, timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled", "expired"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def requests_mix() -> list[dict]:
    samplers = ["ddim", "euler", "euler_a", "dpmpp_2m"]
    return [
        {"prompt": f"shape number {i}", "seed": 1000 + i, "steps": 4 + i % 3,
         "guidance_scale": [1.0, 3.0, 7.5][i % 3], "sampler": samplers[i % 4],
         "negative_prompt": "blurry" if i % 2 else "", "width": 32, "height": 32}
        for i in range(16)
    ]  # fmt: skip


def test_sixteen_concurrent_requests_share_steps_and_match_solo(
    api: ApiServer, worker: WorkerProcess, tiny_model: Path, url: str
) -> None:
    bodies = requests_mix()
    with api.client() as client, ThreadPoolExecutor(16) as pool:
        posted = list(pool.map(lambda body: client.post("/v1/txt2img", json=body), bodies))
        assert [r.status_code for r in posted] == [202] * 16
        jobs = [wait(client, r.json()["id"]) for r in posted]
        assert [job["status"] for job in jobs] == ["succeeded"] * 16
        pngs = [client.get(job["images"][0]).content for job in jobs]
    metrics = worker.metrics()
    count = metrics['ldm_worker_batch_size_count{model="default"}']
    alone = metrics['ldm_worker_batch_size_bucket{le="1.0",model="default"}']
    assert alone < count, "no UNet step was shared"
    assert metrics['ldm_worker_batch_size_sum{model="default"}'] / count > 1.5
    assert metrics['ldm_worker_jobs_total{model="default",outcome="succeeded"}'] >= 16
    assert metrics[f'ldm_build_info{{version="{version("ldm-serve")}"}}'] == 1
    finished = Queue("ldm:default", connection=redis.Redis.from_url(url), serializer=JSONSerializer)
    assert {job["id"] for job in jobs} <= set(finished.finished_job_registry.get_job_ids())

    import torch

    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.txt2img import txt2img

    torch.set_num_threads(1)
    pipe = load_pipeline(tiny_model)
    for body, png in zip(bodies, pngs, strict=True):
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (32, 32)
        text = image.text["parameters"]
        assert text.startswith(body["prompt"]) and f"Seed: {body['seed']}," in text
        assert (
            f"Steps: {body['steps']}," in text
            and "Size: 32x32" in text
            and "Model: default" in text
            and text.endswith(f", Task: txt2img, Version: ldm-serve {version('ldm-serve')}")
        )
        (solo,) = txt2img(
            BatchEngine(pipe), [body["prompt"]], [body["negative_prompt"]], [body["seed"]], 32, 32,
            body["steps"], body["guidance_scale"], body["sampler"],
        )  # fmt: skip
        served = np.asarray(image.convert("RGB")).astype(int)
        alone = np.asarray(solo).astype(int)
        # the engine is batch-invariant on CPU: served in a shared batch == generated alone
        assert np.array_equal(served, alone), body


def test_cancel_running_over_http_and_cli_client(
    api: ApiServer, worker: WorkerProcess, tmp_path: Path
) -> None:
    with api.client() as client:
        job = client.post(
            "/v1/txt2img", json={"prompt": "FAULT_SLOW cancel me", "steps": 50}
        ).json()
        deadline = time.monotonic() + 20
        while client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{job['id']}").status_code in (200, 202)
        final = wait(client, job["id"], timeout=10)
        assert final["status"] == "canceled" and final["progress"]["step"] < 50
    out = tmp_path / "out.png"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "client", "txt2img", "a tiny cat", "-o", str(out),
         "--url", api.url, "--api-key", KEY_A, "--steps", "3", "--seed", "7"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Image.open(out).text["parameters"].startswith("a tiny cat")


def test_ctrl_c_on_the_client_cancels_its_job_in_one_line(
    api: ApiServer, worker: WorkerProcess, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "cli.main", "client", "txt2img", "FAULT_SLOW interrupt me",
            "-o", str(tmp_path / "x.png"), "--url", api.url, "--api-key", KEY_A, "--steps", "50"]
    client = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)  # fmt: skip
    with api.client() as http:
        deadline = time.monotonic() + 30
        while not (jobs := http.get("/v1/jobs?status=running").json()["jobs"]) or \
                jobs[0]["progress"]["step"] < 2:  # fmt: skip
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.05)
        client.send_signal(signal.SIGINT)
        _, stderr = client.communicate(timeout=30)
        final = wait(http, jobs[0]["id"], timeout=10)
    assert client.returncode == 130
    *warnings, last = stderr.strip().splitlines()  # the tiny model's advice comes first
    assert last == f"interrupted: job {jobs[0]['id']} stops at its next step", stderr
    assert all(line.startswith("warning: ") for line in warnings) and "Traceback" not in stderr
    assert final["status"] == "canceled" and final["progress"]["step"] < 50


def test_the_client_sends_model_eta_karras_and_guidance(api: ApiServer, worker: WorkerProcess,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """Options the API takes and `ldm-serve client` had no way to send (--model, --eta,
    --karras; --guidance as generate spells it): its image is the native API's for them."""
    out = tmp_path / "karras.png"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "client", "txt2img", "a tiny cat", "-o", str(out),
         "--url", api.url, "--api-key", KEY_A, "--steps", "3", "--seed", "7", "--model", "default",
         "--sampler", "euler_a", "--karras", "--eta", "0.5", "--guidance", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = {"prompt": "a tiny cat", "steps": 3, "seed": 7, "sampler": "euler_a",
            "guidance_scale": 4.0}  # fmt: skip
    chosen = native_first_image(api, "/v1/txt2img", json={**body, "karras": True, "eta": 0.5})
    plain = native_first_image(api, "/v1/txt2img", json=body)
    assert out.read_bytes() == chosen and chosen != plain


def test_heun_progress_counts_steps_not_denoiser_calls(
    api: ApiServer, worker: WorkerProcess
) -> None:
    """Heun makes 2S - 1 denoiser calls; progress must stay below S until the job is done."""
    steps = 6
    with api.client() as client:
        body = {"prompt": "FAULT_SLOW heun progress", "steps": steps, "sampler": "heun"}
        job_id = client.post("/v1/txt2img", json=body).json()["id"]
        seen: list[tuple[str, int, int]] = []
        deadline = time.monotonic() + 60
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            seen.append((job["status"], job["progress"]["step"], job["progress"]["total"]))
            if job["status"] in ("succeeded", "failed", "canceled", "expired"):
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.02)
    running = [step for status, step, _ in seen if status == "running"]
    assert seen[-1] == ("succeeded", steps, steps), seen
    assert all(total == steps for _, _, total in seen)
    assert running == sorted(running), seen  # never goes back
    assert steps - 2 <= max(running) < steps, seen  # the total is reached only at the end
    assert len(set(running)) >= 3, seen  # progress was visible along the way


def sixteen_bit_png(levels: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (Pillow opens it as mode I;16)."""
    buffer = io.BytesIO()
    Image.fromarray(levels.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_sixteen_bit_greyscale_uploads_mean_what_their_eight_bit_equivalents_mean(
    api: ApiServer, worker: WorkerProcess
) -> None:
    """Found from outside: Pillow clips I;16 at 255, so a 16-bit mid-grey init image was white
    and a mask's 20000/65535 grey was 'repaint'. Scaled, they are their 8-bit twins exactly."""
    y, x = np.mgrid[0:32, 0:32]
    init = (x * 2000 + y * 40).clip(0, 65535)  # 0..62000: almost all above 255
    mask = np.choose((x // 8) % 4, [0, 20000, 45000, 65535])  # bands of four grey levels
    as_8 = {name: encode_png(Image.fromarray(np.round(v / 257).astype(np.uint8)))
            for name, v in (("init", init), ("mask", mask))}  # fmt: skip
    as_16 = {"init": sixteen_bit_png(init), "mask": sixteen_bit_png(mask)}
    base = {"prompt": "a grey fox", "seed": 11, "steps": 4, "strength": 0.6}
    images: dict[tuple[str, str], np.ndarray] = {}
    with api.client() as client:
        for depth, files in (("8", as_8), ("16", as_16)):
            bodies = {
                "img2img": {**base, "init_image": b64(files["init"])},
                "inpaint": {**base, "init_image": b64(files["init"]),
                            "mask_image": b64(files["mask"])},
            }  # fmt: skip
            for task, body in bodies.items():
                reply = client.post(f"/v1/{task}", json=body)
                assert reply.status_code == 202, reply.text
                job = wait(client, reply.json()["id"])
                assert job["status"] == "succeeded", job
                png = client.get(job["images"][0]).content
                images[task, depth] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    for task in ("img2img", "inpaint"):
        assert np.array_equal(images[task, "16"], images[task, "8"]), task


@pytest.mark.slow  # the fast tier's two longest (14 s, 7 s): full tier
def test_synchronous_dialects_wait_past_the_requests_redis_deadline(
    api: ApiServer, worker: WorkerProcess
) -> None:
    """Found from outside: the OpenAI and A1111 routes waited for the job inside the request's
    Redis deadline (LDM_REDIS_DEADLINE, 2 s), so any job longer than that answered 503 'the job
    store is unreachable' while Redis was fine, and its images were lost to the caller."""
    slow = {"prompt": "FAULT_SLOW a long wait", "steps": 30, "seed": 3}  # 0.1 s a step, or more
    with api.client() as client:
        start = time.monotonic()
        generations = client.post(
            "/v1/images/generations",
            timeout=120,
            json={**slow, "size": "32x32", "response_format": "b64_json"},
        )
        waited = time.monotonic() - start
        a1111 = client.post("/sdapi/v1/txt2img", timeout=120,
                            json={**slow, "width": 32, "height": 32})  # fmt: skip
    assert generations.status_code == 200, generations.text
    assert a1111.status_code == 200, a1111.text
    assert waited > 3, "the job must outlast the 2 s deadline"
    for data in (generations.json()["data"][0]["b64_json"], a1111.json()["images"][0]):
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (32, 32)
