"""`ldm-serve webhooks`: the webhook deliverer, a process of its own (never the GPU worker)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the deliverer subcommand."""
    deliver = commands.add_parser(
        "webhooks", help="deliver signed webhooks from the outbox in Redis (retries, SSRF rule)"
    )
    deliver.set_defaults(handler=run_webhooks)


def run_webhooks(args: argparse.Namespace) -> int:
    """Deliver until SIGTERM; settings come from the environment (LDM_WEBHOOK_*)."""
    from webhooks.deliverer import run
    from webhooks.settings import DelivererSettings

    return run(DelivererSettings())
