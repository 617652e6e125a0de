"""`ldm-serve api | worker | up | client`: the serving processes and a command-line client.

Handlers import their layer lazily: `ldm-serve api` never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import client_jobs, up
from cli.client import add_connection_options
from cli.up import up_env  # noqa: F401  (up_env: tests/test_api_defaults.py imports it here)
from jobs.schema import Sampler

if TYPE_CHECKING:
    from cli.client import Client


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the serving subcommands (`up` lives in cli/up.py)."""
    api = commands.add_parser("api", help="run the HTTP API (uvicorn; no torch)")
    up.add_address_options(
        api, "address to listen on; 0.0.0.0 opens the API to every interface", "port to listen on"
    )
    api.add_argument("--log-level", default="info", help="uvicorn's log level")
    api.set_defaults(handler=run_api)

    worker = commands.add_parser(
        "worker", help="run a queue worker: loads the model once, batches jobs continuously"
    )
    worker.add_argument(
        "--model", help="diffusers folder or single file (default: $LDM_MODEL, else models/default)"
    )
    worker.add_argument(
        "--model-name",
        help="name clients send, and the queue it serves (default: $LDM_MODEL_NAME, else default)",
    )
    worker.add_argument(
        "--max-batch", type=int, help="samples per UNet step (default: $LDM_MAX_BATCH, else 8)"
    )
    worker.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (default: $LDM_DEVICE, else auto: cuda when there is one)",
    )
    worker.set_defaults(handler=run_worker)

    up.register(commands)

    client = commands.add_parser("client", help="submit a job to a running API, save its images")
    actions = client.add_subparsers(dest="action", required=True, metavar="ACTION")
    for task, help_text in (
        ("txt2img", "generate images and save them"),
        ("img2img", "transform --init-image (SDEdit) and save the results"),
        ("inpaint", "repaint the --mask's white area of --init-image and save the results"),
        ("upscale", "upscale --image x4 (a served upscaler model) and save the results"),
        ("sample", "sample a model without text (unconditional, or --class-label's class)"),
    ):
        action = actions.add_parser(task, help=help_text, description=help_text)
        add_client_options(action, task)
        action.set_defaults(handler=run_client, task=task)
    client_jobs.register(actions)


def add_client_options(action: argparse.ArgumentParser, task: str) -> None:
    """The options of one `client` task; unset ones take the server's defaults."""
    server = " (default: the server's)"
    if task == "upscale":
        action.add_argument(
            "prompt", nargs="?", default="", help="what the image shows (default: empty)"
        )
    elif task == "sample":
        action.set_defaults(prompt="", negative_prompt=None)
        action.add_argument("--class-label", help="class-conditional models: an index or a name")
    else:
        action.add_argument("prompt", help="what to draw")
    action.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="image file; more images go to OUTPUT-1, OUTPUT-2, ...",
    )
    add_connection_options(action)
    action.add_argument("--model", help="a served model's name (GET /v1/models)" + server)
    if task != "sample":
        action.add_argument("--negative-prompt", help="what not to draw" + server)
    action.add_argument("--width", type=int, help="multiple of 8" + server)
    action.add_argument("--height", type=int, help="multiple of 8" + server)
    action.add_argument("--steps", type=int, help="denoising steps" + server)
    action.add_argument("--guidance-scale", "--guidance", type=float,
                        help="classifier-free guidance" + server)  # fmt: skip
    action.add_argument("--sampler", choices=[s.value for s in Sampler], help="sampler" + server)
    action.add_argument("--eta", type=float, help="fresh-noise scale, 0-1 (default: the sampler's)")
    action.add_argument("--karras", action="store_true", help="Karras et al. (2022) sigma spacing")
    action.add_argument("--seed", type=int, help="image i uses seed + i (default: random)")
    action.add_argument("--num-images", type=int, help="images per request" + server)
    action.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job")
    if task == "upscale":
        action.add_argument("--image", type=Path, required=True, help="the low-res image")
        action.add_argument("--noise-level", type=int, help="0-350 (default: 20)")
    elif task not in ("txt2img", "sample"):
        action.add_argument(
            "--init-image", type=Path, required=True, help="the image to start from"
        )
        action.add_argument(
            "--strength",
            type=float,
            help="share of the schedule run (default: 0.75 img2img, 1 inpaint)",
        )
    if task == "inpaint":
        action.add_argument("--mask", type=Path, required=True, help="white = repaint")
        action.add_argument(
            "--no-keep-unmasked",
            dest="keep_unmasked",
            action="store_false",
            help="the decoded image everywhere (diffusers), not the init "
            "image's pixels outside the mask",
        )


def run_api(args: argparse.Namespace) -> int:
    """uvicorn on service.main:app, with h11 and a request read deadline (service/protocol.py)."""
    import uvicorn

    if not is_loopback(args.host) and not api_keys_set():
        print(
            f"ldm-serve api: WARNING: listening on {up.url_of(args.host, args.port)}, beyond "
            "this machine, with no API keys (LDM_API_KEYS): anyone who can reach it can run "
            "jobs; set LDM_API_KEYS or use --host 127.0.0.1",
            file=sys.stderr,
        )
    uvicorn.run(
        "service.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http="service.protocol:ReadDeadlineH11Protocol",
    )
    return 0


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine alone: localhost or an address in 127.0.0.0/8 or ::1."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may well resolve beyond loopback
        return False


def api_keys_set() -> bool:
    """Whether LDM_API_KEYS names at least one key (service/settings.py ApiSettings.keys)."""
    keys = next((v for k, v in os.environ.items() if k.upper() == "LDM_API_KEYS"), "")
    return any(key.strip() for key in keys.split(","))


def run_worker(args: argparse.Namespace) -> int:
    """Load the model once and serve the queue until stopped; the exit code says how it ended."""
    from workers.process import configure_logging
    from workers.process import run_worker as serve_queue
    from workers.settings import WorkerSettings

    overrides = {
        name: value
        for name, value in (
            ("model", args.model),
            ("model_name", args.model_name),
            ("max_batch", args.max_batch),
            ("device", args.device),
        )
        if value is not None
    }
    settings = WorkerSettings(**overrides)
    configure_logging(settings.log_level)
    return serve_queue(settings)


def run_client(args: argparse.Namespace) -> int:
    """Submit (any task), print the server's warnings, wait, save images as OUTPUT (and
    OUTPUT-1, OUTPUT-2... for more); one line on stderr and exit 1 on any error."""
    from cli.client import ApiError, ApiUnreachable, Client, JobFailed

    try:
        params = client_params(args)
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    client = Client(args.url, args.api_key)
    try:
        images = submit_and_fetch(client, args, params)
    except (ApiError, ApiUnreachable, JobFailed, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for index, data in enumerate(images):
        path = args.output
        if index:
            path = path.with_name(f"{path.stem}-{index}{path.suffix}")
        path.write_bytes(data)
        print(path)
    return 0


def client_params(args: argparse.Namespace) -> dict[str, Any]:
    """The request's fields from the options (unset ones: None); image files read."""
    params: dict[str, Any] = {
        "negative_prompt": args.negative_prompt, "width": args.width, "height": args.height,
        "steps": args.steps, "guidance_scale": args.guidance_scale, "sampler": args.sampler,
        "seed": args.seed, "num_images": args.num_images, "task": args.task,
        "model": args.model, "eta": args.eta, "karras": args.karras or None,
    }  # fmt: skip
    if args.task == "upscale":
        params["image"] = args.image.read_bytes()
        params["noise_level"] = args.noise_level
    elif args.task == "sample" and args.class_label is not None:
        label = args.class_label
        params["class_label"] = int(label) if label.isdigit() else label
    elif args.task not in ("txt2img", "sample"):
        params["init_image"] = args.init_image.read_bytes()
        params["strength"] = args.strength
    if args.task == "inpaint":
        params["mask_image"] = args.mask.read_bytes()
        params["keep_unmasked"] = args.keep_unmasked
    suffix = args.output.suffix.lstrip(".").lower()
    if suffix in ("png", "jpeg", "webp", "jpg"):
        params["output_format"] = "jpeg" if suffix == "jpg" else suffix
    return params


def submit_and_fetch(
    client: Client, args: argparse.Namespace, params: dict[str, Any]
) -> list[bytes]:
    """Submit, print the job's warnings on stderr, wait for it and download its images."""
    from cli.client import JobFailed

    job = client.submit(args.prompt, retry_s=args.timeout, **params)
    for warning in job.get("warnings", []):
        print(f"warning: {warning['message']}", file=sys.stderr)
    try:
        job = client.wait(job["id"], timeout=args.timeout)
    except KeyboardInterrupt:  # nobody waits for it any more: free the worker
        print(f"interrupted: {client_jobs.cancel_outcome(client, job['id'])[1]}", file=sys.stderr)
        raise SystemExit(130) from None
    if job["status"] != "succeeded":
        raise JobFailed(job)
    return [client.image(job["id"], index) for index in range(len(job["images"]))]
