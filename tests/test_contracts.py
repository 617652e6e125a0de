"""Cross-layer contracts no single layer tests would catch: one sampler registry, no cycles."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from cli.generate import register
from jobs.schema import Sampler
from model.sampling.registry import SAMPLERS

REPO = Path(__file__).resolve().parents[1]
HOUSE = ("model", "workers", "jobs", "service", "cli", "training", "testkit", "bench",
         "webhooks")  # fmt: skip
# The two places a sampler's name may be spelled: its registry entry and the request enum.
NAME_HOMES = {REPO / "model/sampling/registry.py", REPO / "jobs/schema.py"}


def house_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every Python module of the house's packages."""
    modules = {}
    for package in HOUSE:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """House modules `module` imports anywhere in its file (TYPE_CHECKING and lazy imports too)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_api_enum_and_cli_choices_are_the_registry() -> None:
    assert [s.value for s in Sampler] == list(SAMPLERS)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    generate = parser._subparsers._group_actions[0].choices["generate"]  # type: ignore[union-attr]
    (sampler,) = [a for a in generate._actions if a.dest == "sampler"]
    assert list(sampler.choices) == list(SAMPLERS)


def test_no_sampler_name_is_spelled_outside_the_registry_and_the_schema() -> None:
    spelled = []
    for path in house_modules().values():
        if path in NAME_HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in SAMPLERS:
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert not spelled, "sampler names outside the registry:\n" + "\n".join(spelled)


def test_the_checker_sees_a_spelled_name(tmp_path: Path) -> None:
    """The check above is not vacuous: a literal name in code is found."""
    tree = ast.parse('choices = ("euler", "other")')
    assert [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)][0] in SAMPLERS


def test_no_import_cycle_in_the_house() -> None:
    modules = house_modules()
    graph = {name: imports_of(path, name, set(modules)) for name, path in modules.items()}
    assert graph["model.engine"] >= {"model.pipeline"}  # the graph sees real edges
    assert "model.engine" not in graph["model.pipeline"]
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
