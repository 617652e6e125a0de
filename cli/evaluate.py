"""`ldm-serve eval shapes --model PATH`: prompt adherence and reconstruction PSNR (held out);
`ldm-serve eval autoencoder --vae PATH`: an autoencoder's PSNR and codebook usage alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_shapes(args: argparse.Namespace) -> int:
    """Evaluate a diffusers folder on held-out shapes prompts; exit 1 if a threshold is missed."""
    import torch

    from training.evaluate import evaluate_shapes

    torch.set_num_threads(args.threads)
    if args.speed:
        from training.evaluate import measure_speed

        print(json.dumps(measure_speed(args.model, steps=args.steps), indent=2))
        return 0
    guidance = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
    report = evaluate_shapes(
        args.model,
        count=args.count,
        steps=args.steps,
        batch_size=args.batch_size,
        grid_path=args.grid,
        **guidance,
    )
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


def run_autoencoder(args: argparse.Namespace) -> int:
    """Reconstruction PSNR (and VQ codebook usage) of a diffusers vae/ or vqvae/ folder."""
    import torch

    from training.autoencoder_eval import evaluate_autoencoder, load_autoencoder_folder

    torch.set_num_threads(args.threads)
    report = evaluate_autoencoder(load_autoencoder_folder(args.vae), count=args.count)
    report["vae"] = str(args.vae)
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `eval shapes` and `eval autoencoder`."""
    parser = commands.add_parser("eval", help="evaluate a model")
    kinds = parser.add_subparsers(dest="kind", required=True)
    shapes = kinds.add_parser("shapes", help="prompt adherence on held-out shapes prompts")
    shapes.add_argument(
        "--model", type=Path, default=Path("models/default"), help="diffusers folder"
    )
    shapes.add_argument("--count", type=int, default=300, help="held-out prompts (max 300)")
    shapes.add_argument("--steps", type=int, default=25, help="denoising steps")
    shapes.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: evaluate.GUIDANCE_SCALE, 3.0)",
    )
    shapes.add_argument("--batch-size", type=int, default=16, help="images per batch")
    shapes.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    shapes.add_argument("--grid", type=Path, default=None, help="write a sample grid PNG here")
    shapes.add_argument("--json", type=Path, default=None, help="write the report here")
    shapes.add_argument("--speed", action="store_true", help="time 1 image and batch 16 instead")
    shapes.set_defaults(handler=run_shapes)
    autoencoder = kinds.add_parser(
        "autoencoder", help="reconstruction PSNR and codebook usage on held-out shapes"
    )
    autoencoder.add_argument(
        "--vae",
        type=Path,
        default=Path("models/default/vae"),
        help="diffusers AutoencoderKL or VQModel folder",
    )
    autoencoder.add_argument("--count", type=int, default=256, help="held-out scenes")
    autoencoder.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    autoencoder.add_argument("--json", type=Path, default=None, help="write the report here")
    autoencoder.set_defaults(handler=run_autoencoder)
