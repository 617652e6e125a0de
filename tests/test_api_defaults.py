"""Deployment request defaults: LDM_DEFAULT_GUIDANCE over real uvicorn + redis, the shipped model's
own defaults set by `ldm-serve up`, and the same defaults in `ldm-serve generate`."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from cli.generate import DEFAULT_MODEL
from cli.main import main as cli_main
from cli.serve import up_env
from jobs.schema import request_model
from jobs.store import JobStore
from service.settings import ApiSettings
from tests.api_harness import ApiServer, api_fixture, serve, store_fixture  # noqa: F401
from tests.conftest import REPO, RedisServer, free_port


@pytest.fixture(scope="module")
def tuned(redis_server: RedisServer) -> Iterator[ApiServer]:
    """An API deployed with LDM_DEFAULT_GUIDANCE=3, as `ldm-serve up` runs the shipped model."""
    yield from serve(redis_server.url, {"LDM_DEFAULT_GUIDANCE": "3"})


def submitted_guidance(server: ApiServer, store: JobStore, body: dict[str, object]) -> float:
    """guidance_scale of the job `body` creates, as answered and as stored for the worker."""
    with server.client() as client:
        reply = client.post("/v1/txt2img", json=body)
    assert reply.status_code == 202, reply.text
    job = reply.json()
    record = store.get(job["id"])
    assert record is not None
    assert record.request.guidance_scale == job["request"]["guidance_scale"]
    return float(record.request.guidance_scale)


def openapi_guidance_default(server: ApiServer) -> float:
    with server.client(None) as client:
        schema = client.get("/openapi.json").json()
    return float(
        schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]["guidance_scale"]["default"]
    )


def test_omitted_guidance_takes_the_configured_default(tuned: ApiServer, store: JobStore) -> None:
    assert submitted_guidance(tuned, store, {"prompt": "a red circle"}) == 3.0
    assert (
        submitted_guidance(tuned, store, {"prompt": "a red circle", "guidance_scale": 7.5}) == 7.5
    )
    assert submitted_guidance(tuned, store, {"prompt": "a red circle", "guidance_scale": 0}) == 0.0
    assert openapi_guidance_default(tuned) == 3.0


def test_without_the_setting_the_default_is_7_5(api: ApiServer, store: JobStore) -> None:
    assert "LDM_DEFAULT_GUIDANCE" not in {**os.environ, **api.env}
    assert submitted_guidance(api, store, {"prompt": "a red circle"}) == 7.5
    assert openapi_guidance_default(api) == 7.5


@pytest.mark.parametrize("value", ["-0.5", "30.5", "nan", "inf", "three"])
def test_out_of_range_default_fails_settings_validation(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LDM_DEFAULT_GUIDANCE", value)
    with pytest.raises(ValidationError, match="LDM_DEFAULT_GUIDANCE"):
        ApiSettings()


def test_bounds_of_the_default_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("0", "30"):
        monkeypatch.setenv("LDM_DEFAULT_GUIDANCE", value)
        assert ApiSettings().limits.default_guidance == float(value)


def test_api_refuses_to_start_with_an_out_of_range_default(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO),
           "LDM_DEFAULT_GUIDANCE": "31"}  # fmt: skip
    argv = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
            "--port", str(free_port())]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "LDM_DEFAULT_GUIDANCE" in result.stderr
    assert "less than or equal to 30" in result.stderr


def api_defaults(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, float]:
    """(width, guidance_scale) of a bare request to an API started with `env`."""
    for name in [name for name in os.environ if name.startswith("LDM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("LDM_"):
            monkeypatch.setenv(name, value)
    body = request_model(ApiSettings().limits)(prompt="x")
    return body.width, body.guidance_scale


def evaluated_guidance() -> float:
    """GUIDANCE_SCALE of training/evaluate.py, read without importing torch."""
    tree = ast.parse((REPO / "training" / "evaluate.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "GUIDANCE_SCALE":
            return float(ast.literal_eval(node.value))
    raise AssertionError("training/evaluate.py defines no GUIDANCE_SCALE")


def test_up_serves_the_shipped_model_at_its_own_guidance(monkeypatch: pytest.MonkeyPatch) -> None:
    env = up_env({})
    assert Path(env["LDM_MODEL"]).resolve() == DEFAULT_MODEL.resolve()
    assert api_defaults(env, monkeypatch) == (64, evaluated_guidance())


def test_up_keeps_the_users_guidance(monkeypatch: pytest.MonkeyPatch) -> None:
    env = up_env({"LDM_DEFAULT_GUIDANCE": "5", "LDM_MODEL": str(DEFAULT_MODEL)})
    assert api_defaults(env, monkeypatch) == (64, 5.0)


def test_up_leaves_other_models_at_the_service_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = up_env({"LDM_MODEL": str(tmp_path / "sd15.safetensors")})
    assert "LDM_DEFAULT_GUIDANCE" not in env
    assert api_defaults(env, monkeypatch) == (512, 7.5)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (64, evaluated_guidance())),
        (["--guidance", "7.5"], (64, 7.5)),
        (["--model", "other.safetensors"], (512, 7.5)),
    ],
)
def test_generate_uses_the_same_defaults(
    argv: list[str], expected: tuple[int, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[argparse.Namespace] = []
    monkeypatch.delenv("LDM_MODEL", raising=False)
    monkeypatch.setattr("cli.generate.run_generate", lambda args: seen.append(args) or 0)
    assert cli_main(["generate", "--prompt", "x", "--out", "x.png", *argv]) == 0
    assert (seen[0].width, seen[0].guidance) == expected
