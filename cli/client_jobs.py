"""`ldm-serve client jobs`: the caller's jobs on a running API, newest first, one line each."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from cli.client import add_connection_options
from jobs.schema import JobStatus

PROMPT_CHARS = 40  # of each job's prompt shown


def register(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `jobs` action of `ldm-serve client`."""
    help_text = "list your jobs, newest first (GET /v1/jobs)"
    action = actions.add_parser("jobs", help=help_text, description=help_text)
    action.add_argument(
        "--status", action="append", choices=[status.value for status in JobStatus], default=[],
        help="only jobs in this status (repeat it for several; default: any)",
    )  # fmt: skip
    action.add_argument("--limit", type=int, default=20, help="jobs listed, 1-1000")
    add_connection_options(action)
    action.set_defaults(handler=run_jobs)


def run_jobs(args: argparse.Namespace) -> int:
    """Print a header and one line per job; one line on stderr and exit 1 on any error."""
    from cli.client import ApiError, ApiUnreachable, Client

    if not 1 <= args.limit <= 1000:
        print("ldm-serve client jobs: error: --limit: 1 to 1000", file=sys.stderr)
        return 2
    try:
        jobs = Client(args.url, args.api_key).jobs(args.status, args.limit)
    except (ApiError, ApiUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'ID':36}  {'STATUS':9}  {'STEP':>7}  {'CREATED (UTC)':19}  {'MODEL':12}  PROMPT")
    for job in jobs:
        print(line(job))
    return 0


def line(job: dict[str, Any]) -> str:
    """One job as a row of the table."""
    created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
    step = f"{job['progress']['step']}/{job['progress']['total']}"
    prompt = job["request"]["prompt"].replace("\n", " ")
    if len(prompt) > PROMPT_CHARS:
        prompt = prompt[: PROMPT_CHARS - 1] + "\u2026"
    return (f"{job['id']:36}  {job['status']:9}  {step:>7}  {created:%Y-%m-%d %H:%M:%S}  "
            f"{job['model'][:12]:12}  {prompt}")  # fmt: skip
