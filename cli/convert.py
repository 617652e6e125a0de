"""`ldm-serve convert`: between diffusers folders and single-file checkpoints: Stable Diffusion's
.safetensors, and the LDM paper's own models as CompVis .ckpt + .yaml (and model-zoo folders)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint.compvis import find_compvis, load_compvis, paper_kind, save_compvis
    from model.checkpoint.compvis_config import read_config
    from model.checkpoint.diffusers_folder import (
        is_diffusers_folder,
        load_diffusers,
        save_diffusers,
    )
    from model.checkpoint.files import CheckpointError
    from model.checkpoint.ldm_folders import load_ldm_folder
    from model.checkpoint.ldm_folders_save import save_ldm_folder
    from model.checkpoint.single_file import load_single_file, save_single_file

    src, dst = Path(args.source), Path(args.destination)
    config = Path(args.config) if args.config else None
    dtype = {"float16": torch.float16, "float32": torch.float32}[args.dtype]
    try:
        compvis = find_compvis(src, config, Path(args.tokenizer) if args.tokenizer else None)
        size = None  # the latent size the UNet was trained at, where the source says
        if is_diffusers_folder(src):
            components = load_ldm_folder(src) or load_diffusers(src)
            unet_config = src / "unet" / "config.json"
            size = json.loads(unet_config.read_text()).get("sample_size")
        elif compvis is not None:
            components = load_compvis(*compvis)
            size = read_config(compvis.yaml).unet.image_size
        else:
            components = load_single_file(src, config)
        paper = paper_kind(components) is not None
        if dst.suffix == ".ckpt":  # CheckpointError for Stable Diffusion
            save_compvis(components, dst, dst.with_suffix(".yaml"), dtype, latent_size=size)
        elif dst.suffix == ".safetensors":
            if paper:
                raise CheckpointError("the paper's models are written as CompVis .ckpt + .yaml")
            save_single_file(components, dst, dtype)
        elif paper:
            save_ldm_folder(components, dst, dtype, latent_size=size)
        else:
            c = components
            save_diffusers(dst, unet=c.unet, vae=c.vae, text_encoder=c.text_encoder,
                           tokenizer=c.tokenizer, schedule=c.schedule, dtype=dtype,
                           upscaler=c.upscaler)  # fmt: skip
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(dst)
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    conv = commands.add_parser(
        "convert",
        help="convert between diffusers folders and single files",
        description="Convert a model between a diffusers folder and a single checkpoint: Stable "
        "Diffusion as FILE.safetensors; the LDM paper's models (LDMTextToImagePipeline, "
        "LDMPipeline, LDMSuperResolutionPipeline folders, class-conditional) as CompVis "
        "FILE.ckpt + FILE.yaml (+ tokenizer/ for text models). A CompVis source is a .ckpt with "
        "its YAML (--config, FILE.yaml or config.yaml beside it) or a folder of config.yaml + "
        "model.ckpt.",
    )
    conv.add_argument("source", help="diffusers folder, .safetensors/.ckpt file or CompVis folder")
    conv.add_argument("destination", help="FILE.safetensors, FILE.ckpt or a folder")
    conv.add_argument(
        "--config", default=None, help="diffusers folder with configs/tokenizer, or a .yaml"
    )
    conv.add_argument(
        "--tokenizer", default=None, help="BERT tokenizer folder of a CompVis text-to-image .ckpt"
    )
    conv.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="weights' precision"
    )
    conv.set_defaults(handler=run_convert)
