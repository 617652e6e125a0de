"""`ldm-serve convert`: between diffusers folders and single-file checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint.diffusers_folder import (
        is_diffusers_folder,
        load_diffusers,
        save_diffusers,
    )
    from model.checkpoint.single_file import load_single_file, save_single_file

    src, dst = Path(args.source), Path(args.destination)
    dtype = {"float16": torch.float16, "float32": torch.float32}[args.dtype]
    if is_diffusers_folder(src):
        components = load_diffusers(src)
    else:
        components = load_single_file(src, Path(args.config) if args.config else None)
    if dst.suffix == ".safetensors":
        save_single_file(components, dst, dtype)
    else:
        c = components
        save_diffusers(dst, unet=c.unet, vae=c.vae, text_encoder=c.text_encoder,
                       tokenizer=c.tokenizer, schedule=c.schedule, dtype=dtype,
                       upscaler=c.upscaler)  # fmt: skip
    print(dst)
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    conv = commands.add_parser("convert", help="convert between diffusers folders and single files")
    conv.add_argument("source", help="diffusers folder or .safetensors/.ckpt file")
    conv.add_argument("destination", help="FILE.safetensors or a folder")
    conv.add_argument("--config", default=None, help="diffusers folder with configs/tokenizer")
    conv.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="weights' precision"
    )
    conv.set_defaults(handler=run_convert)
