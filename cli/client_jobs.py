"""`ldm-serve client jobs` and `client cancel`: the caller's jobs on a running API, newest first,
one line each, and canceling them by id."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cli.client import add_connection_options
from jobs.schema import JobStatus

if TYPE_CHECKING:
    from cli.client import Client

PROMPT_CHARS = 40  # of each job's prompt shown


def register(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `jobs` and `cancel` actions of `ldm-serve client`."""
    help_text = "list your jobs, newest first (GET /v1/jobs)"
    action = actions.add_parser("jobs", help=help_text, description=help_text)
    action.add_argument(
        "--status", action="append", choices=[status.value for status in JobStatus], default=[],
        help="only jobs in this status (repeat it for several; default: any)",
    )  # fmt: skip
    action.add_argument("--limit", type=int, default=20, help="jobs listed, 1-1000")
    add_connection_options(action)
    action.set_defaults(handler=run_jobs)
    help_text = "cancel jobs by id: a queued one never runs, a running one stops at its next step"
    action = actions.add_parser("cancel", help=help_text, description=help_text)
    action.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="as `client jobs` lists them")
    add_connection_options(action)
    action.set_defaults(handler=run_cancel)


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


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel each job, a line each (stdout: canceled, stderr: not); exit 1 if any was not."""
    from cli.client import Client

    client, all_canceled = Client(args.url, args.api_key), True
    for job_id in args.job_ids:
        canceled, said = cancel_outcome(client, job_id)
        print(said, file=sys.stdout if canceled else sys.stderr)
        all_canceled &= canceled
    return 0 if all_canceled else 1


def cancel_outcome(client: Client, job_id: str) -> tuple[bool, str]:
    """Cancel a job: whether it is canceled (or stops at its next step), and in a few words."""
    from cli.client import ApiError, ApiUnreachable

    try:
        status = client.cancel(job_id)["status"]
    except ApiError as exc:  # 404 unknown, 409 finished meanwhile, 410 expired
        return False, f"job {job_id} not canceled: {exc}"
    except ApiUnreachable as exc:
        return False, f"job {job_id} may still run: {exc}"
    return True, f"job {job_id} {'canceled' if status == 'canceled' else 'stops at its next step'}"
