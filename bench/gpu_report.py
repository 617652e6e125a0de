"""Markdown report for bench/gpu.py: printed as it grows, the file rewritten after every row."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Report:
    """Markdown lines printed as they come, the file at `path` rewritten after each; `attempt`
    runs a row under the time budget and reports a failure instead of raising it."""

    def __init__(self, path: Path | None, budget_s: float) -> None:
        self.path, self.deadline = path, time.perf_counter() + budget_s
        self.lines: list[str] = []
        self.columns = 0

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        print("\n".join(lines), flush=True)
        if self.path is not None:
            self.path.write_text("\n".join(self.lines) + "\n")

    def table(self, title: str, columns: list[str]) -> None:
        self.columns = len(columns)
        rule = "| --- |" + " ---: |" * (len(columns) - 2) + " --- |"  # text, numbers, notes
        self.add("", f"### {title}", "", "| " + " | ".join(columns) + " |", rule)

    def row(self, *cells: str) -> None:
        cells = (*cells, *[""] * (self.columns - len(cells)))
        self.add("| " + " | ".join(cells) + " |")

    def pair(self, label: str, ours: float, theirs: float, fmt: str, note: str = "") -> None:
        """A row of ours and diffusers (each `fmt`-formatted) and their ratio."""
        self.row(label, fmt.format(ours), fmt.format(theirs), f"**{ours / theirs:.2f}**", note)

    def attempt(self, label: str, fn: Callable[[], Any]) -> Any:
        if time.perf_counter() > self.deadline:
            self.row(label, "skipped: past --budget-s")
            return None
        progress(f"{label} ...")
        try:
            return fn()
        except Exception as error:  # report it and go on to the next row
            traceback.print_exc()
            self.row(label, f"error: {type(error).__name__}: {str(error)[:150]}")
            return None


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
