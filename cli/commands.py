"""The registry of subcommands: each module adds its own parser and a lazily importing handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Registrar = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

REGISTRARS: list[Registrar] = []

from cli import evaluate, train  # noqa: E402  (registrars are light: handlers import lazily)

REGISTRARS += [train.register, evaluate.register]

from cli import serve  # noqa: E402  (registrars are light: handlers import lazily)

REGISTRARS += [serve.register]

from cli import convert, generate, upscale  # noqa: E402  (registrars are light: handlers import lazily)

REGISTRARS += [generate.register, convert.register, upscale.register]

from cli import webhooks  # noqa: E402  (registrars are light: handlers import lazily)

REGISTRARS += [webhooks.register]
