"""`ldm-serve upscale`: super-resolution x4 with an upscaler model from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cli.generate import model_problem, option_problems, save_images
from jobs.schema import MAX_NOISE_LEVEL, Sampler


def run_upscale(args: argparse.Namespace) -> int:
    from jobs.images import BadImage, as_init_image, decode, fit, job_size

    problem = invalid_options(args)  # before torch is imported: a usage error answers at once
    if problem:
        print(f"ldm-serve upscale: error: {problem}", file=sys.stderr)
        return 2
    try:
        image = as_init_image(decode(Path(args.image).read_bytes(), max_pixels=1 << 26))
    except (OSError, BadImage) as exc:
        print(f"ldm-serve upscale: error: --image {args.image}: {exc}", file=sys.stderr)
        return 2
    from model.checkpoint.files import CheckpointError
    from model.devices import DTYPES, resolve_device
    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.txt2img import run, specs_for

    low = fit(image, job_size(image, None, None))  # rounded down to a multiple of 8
    started = time.perf_counter()
    try:
        pipe = load_pipeline(args.model, resolve_device(args.device), DTYPES[args.dtype])
    except CheckpointError as error:  # a path that is no model: one line, as for other options
        print(f"ldm-serve upscale: error: {model_problem(args.model, error)}", file=sys.stderr)
        return 2
    if "upscale" not in pipe.tasks:
        print(f"ldm-serve upscale: error: --model {args.model} is not an upscaler (it runs: "
              f"{', '.join(pipe.tasks)})", file=sys.stderr)  # fmt: skip
        return 2
    f = pipe.downsampling_factor
    n = args.num_images
    specs = specs_for(
        [args.prompt] * n, [args.negative_prompt] * n, [args.seed + i for i in range(n)],
        width=low.width * f, height=low.height * f, steps=args.steps,
        guidance_scale=args.guidance, sampler=args.sampler, low_res_image=low,
        noise_level=args.noise_level,
    )  # fmt: skip
    loaded = time.perf_counter()
    images = run(BatchEngine(pipe), specs)
    done = time.perf_counter()
    save_images(images, args.out)
    megapixels = n * images[0].width * images[0].height / 1e6
    print(f"loaded in {loaded - started:.2f}s, upscaled {low.width}x{low.height} -> "
          f"{images[0].width}x{images[0].height} ({n} image(s)) in {done - loaded:.2f}s, "
          f"{(done - loaded) / megapixels:.2f}s per output megapixel")  # fmt: skip
    return 0


def invalid_options(args: argparse.Namespace) -> str | None:
    """Options outside the API's bounds for an upscale job (as its 422s word them), or a model
    path that names nothing; None when all fit."""
    from pydantic import ValidationError

    from jobs.image_requests import UpscaleRequest

    if not Path(args.model).exists():
        return f"--model {args.model}: no such file or directory"
    values = {"image": "unused", "prompt": args.prompt, "negative_prompt": args.negative_prompt,
              "steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed,
              "num_images": args.num_images, "noise_level": args.noise_level}  # fmt: skip
    try:
        UpscaleRequest(**values)
    except ValidationError as exc:
        return option_problems(exc, {"guidance_scale": "--guidance"})
    return None


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = commands.add_parser(
        "upscale", help="upscale an image x4 locally with an upscaler model (SD x4 layout)"
    )
    up.add_argument("--model", required=True, help="upscaler: diffusers folder (x4 layout)")
    up.add_argument("--image", required=True, help="the low-resolution image (rounded down to 8)")
    up.add_argument("--prompt", default="", help="what the image shows (default: empty)")
    up.add_argument("--negative-prompt", default="", help="what not to draw")
    up.add_argument(
        "--noise-level", type=int, default=20,
        help=f"noise added to the input, 0-{MAX_NOISE_LEVEL} (default: 20): higher invents more",
    )  # fmt: skip
    up.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    up.add_argument("--steps", type=int, default=25, help="denoising steps")
    up.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    up.add_argument(
        "--sampler", choices=[s.value for s in Sampler], default=Sampler.ddim.value, help="sampler"
    )
    up.add_argument("--num-images", type=int, default=1, help="images to generate")
    up.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    up.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="precision"
    )
    up.add_argument("-o", "--out", required=True, help="FILE.png (FILE-i.png for several images)")
    up.set_defaults(handler=run_upscale)
