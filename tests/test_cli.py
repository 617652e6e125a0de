"""The console script as a first-time user meets it, run as subprocesses: help that says what each
command and option does, one-line errors instead of tracebacks, `api` on loopback unless told,
and the shipped model's warnings from `generate`."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from cli.main import build_parser
from tests.conftest import REPO, RedisServer, free_port

OTHER_LOOPBACK = "127.0.0.2"  # this machine too, but not the address a 127.0.0.1 socket binds


def ldm_serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(command path, action, its parser) for every argument of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action, parser


def test_top_level_help_says_what_each_command_does() -> None:
    result = ldm_serve("--help")
    assert result.returncode == 0
    assert "Start here" in result.stdout and "ldm-serve up" in result.stdout
    assert "console script" not in result.stdout  # no longer the module's internal docstring
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for choice in commands._choices_actions:
        assert choice.help, choice.dest
        assert f"{choice.dest} " in result.stdout and choice.help.split()[0] in result.stdout


def test_version_is_the_installed_release() -> None:
    result = ldm_serve("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ldm-serve {version('ldm-serve')}\n"


def test_every_option_has_a_description_and_shows_its_default() -> None:
    undescribed, no_default = [], []
    for path, action, parser in walk(build_parser()):
        name = " ".join(
            [*path, action.option_strings[-1] if action.option_strings else action.dest]
        )
        if not action.help:
            undescribed.append(name)
        shown = parser._get_formatter()._get_help_string(action) or ""
        flag = action.default in (None, True, False) or action.required
        if action.option_strings and not flag and "default" not in shown:
            no_default.append(name)
    assert not undescribed and not no_default, (undescribed, no_default)
    help_text = ldm_serve("generate", "--help").stdout
    assert "denoising steps (default: 25)" in " ".join(help_text.split())
    assert "(default: $LDM_API_HOST, else 127.0.0.1)" in " ".join(
        ldm_serve("up", "-h").stdout.split()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--width", "65"], "--width 65: Input should be a multiple of 8"),
        (["--height", "4096"], "--height 4096: Input should be less than or equal to 2048"),
        (["--steps", "0"], "--steps 0: Input should be greater than or equal to 1"),
        (["--guidance", "31"], "--guidance 31.0: Input should be less than or equal to 30"),
        (["--num-images", "5"], "--num-images 5: Input should be less than or equal to 4"),
        (["--prompt", " "], "--prompt: must not be blank"),
    ],
)
def test_generate_rejects_what_the_api_would_in_one_line(argv: list[str], message: str) -> None:
    result = ldm_serve("generate", "--prompt", "a red circle", "--out", "x.png", *argv)
    assert result.returncode == 2
    assert result.stderr == f"ldm-serve generate: error: {message}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--noise-level", "351"], "--noise-level 351: Input should be less than or equal to 350"),
        (["--model", "/nonexistent"], "--model /nonexistent: no such file or directory"),
        pytest.param(
            ["--steps", "0"],
            "--steps 0: Input should be greater than or equal to 1",
            marks=pytest.mark.slow,
        ),
        (
            ["--image", "/nonexistent.png"],
            "--image /nonexistent.png: [Errno 2] No such file or directory: '/nonexistent.png'",
        ),  # fmt: skip
        pytest.param(  # loads the model (torch): seconds, where the others answer at once
            [],
            "--model models/default is not an upscaler (it runs: txt2img, img2img, inpaint)",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_upscale_rejects_bad_options_in_one_line(argv: list[str], message: str) -> None:
    image = str(REPO / "docs" / "playground.png")
    result = ldm_serve("upscale", "--model", "models/default", "--image", image, "--out",
                       "x.png", *argv)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == f"ldm-serve upscale: error: {message}"
    assert "Traceback" not in result.stderr


SLOW = pytest.mark.slow  # each imports torch in a subprocess (~10 s here): one in the fast tier
REFUSED = "junk.ckpt was refused: not a plain-weights checkpoint"


@pytest.mark.parametrize(
    ("command", "name", "content", "why"),
    [
        ("generate", "junk.ckpt", b"junk\n", REFUSED),
        pytest.param("upscale", "junk.ckpt", b"junk\n", REFUSED, marks=SLOW),
        *(pytest.param(command, name, content, why, marks=SLOW)
          for command in ("generate", "upscale")
          for name, content, why in (
              ("empty", None, "not a diffusers folder or a checkpoint file"),
              ("junk.safetensors", b"not weights",
               "junk.safetensors is not a readable safetensors file"))),
    ],
)  # fmt: skip
def test_a_model_path_that_holds_no_model_is_one_line(
    tmp_path: Path, command: str, name: str, content: bytes | None, why: str
) -> None:
    model = tmp_path / name
    model.mkdir() if content is None else model.write_bytes(content)
    inputs = ["--prompt", "x"] if command == "generate" else [
        "--image", str(REPO / "docs" / "playground.png")]  # fmt: skip
    result = ldm_serve(command, "--model", str(model), *inputs, "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"ldm-serve {command}: error: --model {model}: {why}"), last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # a worker process importing torch: seconds
def test_a_worker_whose_model_path_holds_no_model_exits_2_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"junk\n")  # torch's unpickler raised KeyError here: a traceback, exit 1
    env = {**os.environ, "LDM_METRICS_PORT": "0", "LDM_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = ldm_serve("worker", "--model", str(junk), env=env)  # fails before Redis is needed
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"model_load_failed path={junk} error=junk.ckpt was refused: not a plain-weights " \
        "checkpoint (KeyError: " in result.stderr  # fmt: skip


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_generate_prints_the_shipped_models_warnings(tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    result = ldm_serve("generate", "--prompt", "a cat", "--steps", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning: prompt: the model's vocabulary has no 'cat'" in result.stderr
    assert "Loading weights" not in result.stderr  # transformers' tqdm bar, as workers log it
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_generate_takes_the_prompt_positionally_as_client_does(tmp_path: Path) -> None:
    by_option, positional = tmp_path / "option.png", tmp_path / "positional.png"
    for argv in (("--prompt", "a red circle", "-o", str(by_option)),
                 ("a red circle", "-o", str(positional))):  # fmt: skip
        result = ldm_serve("generate", *argv, "--steps", "3", "--seed", "4")
        assert result.returncode == 0, result.stderr
    assert positional.read_bytes() == by_option.read_bytes()


def test_generate_refuses_two_different_prompts_in_one_line(tmp_path: Path) -> None:
    result = ldm_serve("generate", "a red circle", "--prompt", "a blue square", "-o",
                       str(tmp_path / "x.png"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "ldm-serve generate: error: two prompts: 'a red circle' " \
        "and --prompt 'a blue square'; give one"  # fmt: skip
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "cli.main", "generate", "a red circle", "--steps", "150",
            "--num-images", "4", "--width", "256", "--height", "256", "-o", str(tmp_path / "x.png")]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    time.sleep(8)  # loading or sampling: a minute's work at these settings
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr


def test_client_names_the_url_it_cannot_reach() -> None:
    port = free_port()  # nothing listens there
    result = ldm_serve("client", "txt2img", "a red circle", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert (
        result.stderr == f"error: cannot connect to http://127.0.0.1:{port}: connection refused\n"
    )


def serve_api(redis_url: str, log: Path, *argv: str) -> tuple[subprocess.Popen[bytes], int]:
    """`ldm-serve api` without API keys, healthy on 127.0.0.1."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDM_")}
    env |= {"REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port), *argv],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, port
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def connects(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def test_api_listens_on_loopback_unless_told_and_warns_when_open_without_keys(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    for argv, reachable_beyond in (((), False), (("--host", "0.0.0.0"), True)):
        log = tmp_path / f"api-{len(argv)}.log"
        process, port = serve_api(redis_server.url, log, *argv)
        try:
            assert connects(OTHER_LOOPBACK, port) is reachable_beyond
        finally:
            process.terminate()
            process.wait(timeout=20)
        warned = "WARNING: listening on http://0.0.0.0" in log.read_text()
        assert warned is reachable_beyond, log.read_text()
        assert ("LDM_API_KEYS" in log.read_text()) is reachable_beyond
        host = "0.0.0.0" if argv else "127.0.0.1"
        assert f"Uvicorn running on http://{host}:{port}" in log.read_text()
