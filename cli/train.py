"""`ldm-serve train autoencoder|ldm`: the two training stages of the default shapes model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of images with caption .txt side files (default: shapes)",
    )
    parser.add_argument("--num-images", type=int, default=20000, help="shapes scenes to generate")
    parser.add_argument("--data-seed", type=int, default=1, help="seed of the shapes scenes")
    parser.add_argument("--size", type=int, default=64, help="image side for --images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and batches")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default: the stage's own)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the stage's own)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")


def _load_data(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """uint8 images and either shapes Samples or plain caption strings."""
    import numpy as np

    if args.images is not None:
        from training.folder import load_folder

        return load_folder(args.images, args.size)
    from training.shapes import make_samples, render

    samples = make_samples(args.num_images, args.data_seed)
    return np.stack([render(s.scene) for s in samples]), samples


def _overrides(args: argparse.Namespace, **names: str) -> dict[str, Any]:
    """Training-config fields given on the command line."""
    out = {"steps": args.steps, "seed": args.seed, "threads": args.threads}
    for field, attr in names.items():
        if getattr(args, attr) is not None:
            out[field] = getattr(args, attr)
    return out


def run_autoencoder(args: argparse.Namespace) -> int:
    """Stage 1 handler."""
    import numpy as np

    from training.autoencoder_trainer import AutoencoderTraining, train_autoencoder

    if args.kind == "vq":
        return run_vq_autoencoder(args)
    images, _ = _load_data(args)
    held_out = images[-256:]
    training = AutoencoderTraining(
        **_overrides(args, batch_size="batch_size", learning_rate="lr", target_psnr="target_psnr")
    )
    train_autoencoder(
        np.ascontiguousarray(images[:-256]),
        held_out,
        args.run_dir,
        training=training,
        resume=not args.no_resume,
        init=args.init,
        decoder_only=args.decoder_only,
    )
    return 0


def run_vq_autoencoder(args: argparse.Namespace) -> int:
    """Stage 1 handler, VQ-regularized variant (the paper's VQ-reg.; Table 8)."""
    import numpy as np
    import torch

    from training.vq_trainer import SHAPES_CODEBOOK, VQTraining, train_vq_autoencoder

    if args.init is not None or args.decoder_only:
        raise SystemExit("--init and --decoder-only are for --kind kl")
    images, _ = _load_data(args)
    training = VQTraining(
        **_overrides(args, batch_size="batch_size", learning_rate="lr", target_psnr="target_psnr")
    )
    train_vq_autoencoder(
        np.ascontiguousarray(images[:-256]),
        images[-256:],
        args.run_dir,
        training=training,
        codebook_size=args.codebook_size or SHAPES_CODEBOOK,
        resume=not args.no_resume,
        output=args.output,
        dtype=torch.float16 if args.fp16 else torch.float32,
    )
    return 0


def run_ldm(args: argparse.Namespace) -> int:
    """Stage 2 handler."""
    import dataclasses

    from training.ldm_trainer import SHAPES_SCHEDULE, SHAPES_UNET, LDMTraining, train_ldm

    images, captions = _load_data(args)
    training = LDMTraining(
        **_overrides(
            args, batch_size="batch_size", learning_rate="lr", sample_every="sample_every"
        ),
        device=args.device,
    )
    schedule = dataclasses.replace(SHAPES_SCHEDULE, prediction_type=args.prediction_type)
    unet = SHAPES_UNET
    if args.attention_levels is not None:
        levels = tuple(flag == "1" for flag in args.attention_levels)
        unet = dataclasses.replace(SHAPES_UNET, attention_levels=levels)
    train_ldm(
        images,
        captions,
        args.autoencoder,
        args.run_dir,
        args.output or args.run_dir / "model",
        unet_config=unet,
        schedule=schedule,
        training=training,
        resume=not args.no_resume,
        init=args.init,
    )
    return 0


def run_align(args: argparse.Namespace) -> int:
    """Stage 3 handler: the decoder learns the UNet's latents; writes a new model folder."""
    import shutil

    import numpy as np
    import torch

    from model.checkpoint.diffusers_folder import save_diffusers
    from model.pipeline import load_pipeline
    from training.autoencoder_trainer import load_autoencoder
    from training.decoder_alignment import AlignTraining, align_decoder
    from training.shapes import make_samples, render

    torch.set_num_threads(args.threads)
    components = load_pipeline(args.model).components
    autoencoder = load_autoencoder(args.autoencoder)
    samples = make_samples(args.num_images, args.data_seed)
    images = np.stack([render(s.scene) for s in samples])
    training = AlignTraining(steps=args.steps, seed=args.seed)
    align_decoder(components, autoencoder, [s.caption for s in samples], images, training)
    save_diffusers(
        args.output,
        unet=components.unet,
        vae=autoencoder,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        schedule=components.schedule,
    )
    for name in ("vocab.json", "merges.txt"):  # the BPE files the tokenizer was built from
        if (args.model / "tokenizer" / name).exists():
            shutil.copy(args.model / "tokenizer" / name, args.output / "tokenizer" / name)
    print(f"[align] wrote {args.output}", flush=True)
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `train autoencoder` and `train ldm`."""
    train = commands.add_parser(
        "train", help="train the autoencoder, then the latent diffusion model"
    )
    stages = train.add_subparsers(dest="stage", required=True)
    stage1 = stages.add_parser("autoencoder", help="stage 1: KL (or VQ) autoencoder")
    _data_args(stage1)
    stage1.add_argument(
        "--kind",
        choices=("kl", "vq"),
        default="kl",
        help="regularizer: kl (the served model's) or vq (the paper's VQ-reg. variant)",
    )
    stage1.add_argument(
        "--codebook-size", type=int, default=None, help="--kind vq: codes (default 256)"
    )
    stage1.add_argument(
        "--output",
        type=Path,
        default=None,
        help="--kind vq: the diffusers VQModel folder written (default: RUN_DIR/vqvae)",
    )
    stage1.add_argument("--fp16", action="store_true", help="--kind vq: fp16 folder weights")
    stage1.add_argument(
        "--run-dir", type=Path, default=Path("runs/autoencoder"), help="checkpoints and logs"
    )
    stage1.add_argument("--target-psnr", type=float, default=None, help="stop early at this dB")
    stage1.add_argument("--init", type=Path, default=None, help="start from this autoencoder.pt")
    stage1.add_argument(
        "--decoder-only",
        action="store_true",
        help="fine-tune only the decoder: latents (and stage 2) stay valid",
    )
    stage1.set_defaults(handler=run_autoencoder)
    stage2 = stages.add_parser("ldm", help="stage 2: UNet + text encoder on pre-encoded latents")
    _data_args(stage2)
    stage2.add_argument(
        "--autoencoder",
        type=Path,
        default=Path("runs/autoencoder/autoencoder.pt"),
        help="the stage-1 autoencoder",
    )
    stage2.add_argument("--run-dir", type=Path, default=Path("runs/ldm"), help="checkpoints, logs")
    stage2.add_argument(  # never the shipped model's folder unless asked: a run overwrote it
        "--output", type=Path, default=None,
        help="the diffusers folder written (default: RUN_DIR/model)",
    )  # fmt: skip
    stage2.add_argument(
        "--prediction-type",
        choices=("v_prediction", "epsilon"),
        default="v_prediction",
        help="what the UNet learns to predict (v: Salimans & Ho, 2022)",
    )
    stage2.add_argument(
        "--device", default="cpu", help="where the UNet trains (cpu, cuda); data stays seeded"
    )
    stage2.add_argument(
        "--attention-levels",
        default=None,
        help="one 0/1 per UNet level, 16x16 first (default: 0111, no attention at 16x16)",
    )
    stage2.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this stage-2 checkpoint.pt (its EMA weights); blocks it lacks start as "
        "the identity",
    )
    stage2.add_argument(
        "--sample-every",
        type=int,
        default=None,
        help="steps between sample grids, 0: none (default: the stage's own)",
    )
    stage2.set_defaults(handler=run_ldm)
    stage3 = stages.add_parser(
        "align-decoder", help="stage 3: fine-tune the decoder on the UNet's own latents (SDEdit)"
    )
    stage3.add_argument("--model", type=Path, required=True, help="the stage-2 model folder")
    stage3.add_argument(
        "--autoencoder", type=Path, required=True, help="stage-1 autoencoder.pt (fp32)"
    )
    stage3.add_argument("--output", type=Path, required=True, help="the model folder written")
    stage3.add_argument("--num-images", type=int, default=3000, help="shapes scenes for pairs")
    stage3.add_argument("--data-seed", type=int, default=7, help="seed of the shapes scenes")
    stage3.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    stage3.add_argument("--seed", type=int, default=0, help="seed of the batches")
    stage3.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    stage3.set_defaults(handler=run_align)
