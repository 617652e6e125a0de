"""`ldm-serve api | worker | up | client`: the serving processes and a command-line client.

Handlers import their layer lazily: `ldm-serve api` never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.schema import Sampler

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the serving subcommands."""
    api = commands.add_parser("api", help="run the HTTP API (uvicorn, no torch)")
    api.add_argument("--host", default=os.environ.get("LDM_API_HOST", "0.0.0.0"))
    api.add_argument("--port", type=int, default=int(os.environ.get("LDM_API_PORT", "8000")))
    api.add_argument("--log-level", default="info")
    api.set_defaults(handler=run_api)

    worker = commands.add_parser("worker", help="run one continuously batching worker")
    worker.add_argument("--model", help="model path (default: LDM_MODEL)")
    worker.add_argument("--model-name", help="served model name and queue (LDM_MODEL_NAME)")
    worker.add_argument("--max-batch", type=int, help="samples per UNet step (LDM_MAX_BATCH)")
    worker.add_argument("--device", choices=["auto", "cpu", "cuda"], help="LDM_DEVICE")
    worker.set_defaults(handler=run_worker)

    up = commands.add_parser("up", help="Redis (if needed) + API + one worker, in the foreground")
    up.add_argument("--data-dir", type=Path, default=Path(".ldm-serve"), help="Redis AOF dir")
    up.add_argument("--port", type=int, default=int(os.environ.get("LDM_API_PORT", "8000")))
    up.set_defaults(handler=run_up)

    client = commands.add_parser("client", help="talk to a running API")
    actions = client.add_subparsers(dest="action", required=True, metavar="ACTION")
    for task, help_text in (
        ("txt2img", "generate images and save them"),
        ("img2img", "transform --init-image (SDEdit) and save the results"),
        ("inpaint", "repaint the --mask's white area of --init-image and save the results"),
        ("upscale", "upscale --image x4 (a served upscaler model) and save the results"),
    ):
        action = actions.add_parser(task, help=help_text)
        action.add_argument("prompt", nargs="?" if task == "upscale" else None, default="")
        action.add_argument("-o", "--output", type=Path, default=Path("out.png"))
        action.add_argument("--url", default=os.environ.get("LDM_URL", "http://127.0.0.1:8000"))
        action.add_argument("--api-key", default=os.environ.get("LDM_API_KEY"))
        action.add_argument("--negative-prompt")
        action.add_argument("--width", type=int)
        action.add_argument("--height", type=int)
        action.add_argument("--steps", type=int)
        action.add_argument("--guidance-scale", type=float)
        action.add_argument("--sampler", choices=[s.value for s in Sampler])
        action.add_argument("--seed", type=int)
        action.add_argument("--num-images", type=int)
        action.add_argument("--timeout", type=float, default=600.0)
        if task == "upscale":
            action.add_argument("--image", type=Path, required=True, help="the low-res image")
            action.add_argument("--noise-level", type=int, help="0-350 (default 20)")
        elif task != "txt2img":
            action.add_argument("--init-image", type=Path, required=True)
            action.add_argument("--strength", type=float, help="0.75 img2img, 1 inpaint")
        if task == "inpaint":
            action.add_argument("--mask", type=Path, required=True, help="white = repaint")
            action.add_argument("--no-keep-unmasked", dest="keep_unmasked", action="store_false",
                                help="the decoded image everywhere (diffusers), not the init "
                                "image's pixels outside the mask")  # fmt: skip
        action.set_defaults(handler=run_client, task=task)


def run_api(args: argparse.Namespace) -> int:
    """uvicorn on service.main:app, with h11 and a request read deadline (service/protocol.py)."""
    import uvicorn

    uvicorn.run(
        "service.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http="service.protocol:ReadDeadlineH11Protocol",
    )
    return 0


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


def run_up(args: argparse.Namespace) -> int:
    """The README's one-command local run: Redis if needed, the API and one CPU worker."""
    import logging
    import signal
    import subprocess
    import time

    logging.basicConfig(level="INFO", format="%(asctime)s up %(message)s")
    log = logging.getLogger("ldm-serve.up")
    env = up_env(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    if not _redis_reachable(env["REDIS_URL"]):
        redis = _start_redis(env["REDIS_URL"], args.data_dir / "redis")
        if redis is None:
            return 1
        children.append(("redis", redis))
    cli = [sys.executable, "-m", "cli.main"]
    for name, argv in (
        ("api", [*cli, "api", "--port", str(args.port)]),
        ("worker", [*cli, "worker"]),
    ):
        children.append((name, subprocess.Popen(argv, env=env, start_new_session=True)))
    log.info("API on http://127.0.0.1:%d (docs at /docs); Ctrl-C stops everything", args.port)
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    code = 0
    while not stop:
        dead = [(name, proc) for name, proc in children if proc.poll() is not None]
        if dead:
            log.error("%s exited with %s; stopping the rest", dead[0][0], dead[0][1].returncode)
            code = 1
            break
        time.sleep(0.25)
    grace = float(env["LDM_SHUTDOWN_GRACE"]) + 15
    for name, proc in reversed(children):  # worker first, Redis last
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=grace if name == "worker" else 15)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop; killing it", name)
            proc.kill()
            proc.wait()
    log.info("stopped")
    return code


def up_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment of `up`'s API and worker: `environ` plus local defaults (its values win).

    Serving the shipped model, requests that omit width/height/guidance_scale get the model's own
    values (cli.generate.DEFAULT_MODEL_SIZE/_GUIDANCE) instead of the service-wide 512 and 7.5.
    """
    from cli.generate import DEFAULT_MODEL, DEFAULT_MODEL_GUIDANCE, DEFAULT_MODEL_SIZE

    env = dict(environ)
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("LDM_DEVICE", "cpu")
    env.setdefault("LDM_MODEL", str(DEFAULT_MODEL))  # the shipped model, wherever `up` runs from
    if Path(env["LDM_MODEL"]).resolve() == DEFAULT_MODEL.resolve():
        env.setdefault("LDM_DEFAULT_SIZE", str(DEFAULT_MODEL_SIZE))
        env.setdefault("LDM_DEFAULT_GUIDANCE", f"{DEFAULT_MODEL_GUIDANCE:g}")
    env.setdefault("LDM_SHUTDOWN_GRACE", "10")
    return env


def _redis_reachable(url: str) -> bool:
    """Whether a Redis answers PING at url."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _start_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Debian's redis-server on the URL's local port: AOF in data_dir, noeviction."""
    import shutil
    import subprocess
    import time
    from urllib.parse import urlparse

    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found: sudo apt-get install -y redis-server", file=sys.stderr)
        return None
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", None):
        print(f"Redis at {url} is unreachable and not local; start it first", file=sys.stderr)
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(parsed.port or 6379), "--bind", "127.0.0.1", "--dir",
            str(data_dir.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        if _redis_reachable(url):
            return process
        time.sleep(0.1)
    print(f"redis-server did not come up on {url}", file=sys.stderr)
    process.kill()
    return None


def run_client(args: argparse.Namespace) -> int:
    """Submit (any task), wait, save images as OUTPUT (and OUTPUT-1, OUTPUT-2... for more)."""
    from cli.client import ApiError, Client, JobFailed

    params = {
        "negative_prompt": args.negative_prompt, "width": args.width, "height": args.height,
        "steps": args.steps, "guidance_scale": args.guidance_scale, "sampler": args.sampler,
        "seed": args.seed, "num_images": args.num_images, "task": args.task,
    }  # fmt: skip
    if args.task == "upscale":
        params["image"] = args.image.read_bytes()
        params["noise_level"] = args.noise_level
    elif args.task != "txt2img":
        params["init_image"] = args.init_image.read_bytes()
        params["strength"] = args.strength
    if args.task == "inpaint":
        params["mask_image"] = args.mask.read_bytes()
        params["keep_unmasked"] = args.keep_unmasked
    suffix = args.output.suffix.lstrip(".").lower()
    if suffix in ("png", "jpeg", "webp", "jpg"):
        params["output_format"] = "jpeg" if suffix == "jpg" else suffix
    client = Client(args.url, args.api_key)
    try:
        images = client.txt2img(args.prompt, timeout=args.timeout, **params)
    except (ApiError, JobFailed, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for index, data in enumerate(images):
        path = args.output
        if index:
            path = path.with_name(f"{path.stem}-{index}{path.suffix}")
        path.write_bytes(data)
        print(path)
    return 0
