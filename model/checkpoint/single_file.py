"""Original CompVis/Stability single-file checkpoints (`model.diffusion_model.*`, ...).

Structure comes from, in order: our own safetensors metadata (written by `save_single_file`, which
makes the file self-contained), a diffusers folder given as `config_dir`, or the key shapes plus the
SD 1.x/2.x conventions. A tokenizer is not part of original files: it comes from the first two.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from model.autoencoder import AutoencoderConfig, AutoencoderKL
from model.checkpoint import configs
from model.checkpoint.diffusers_folder import load_noise_augmentation
from model.checkpoint.files import (
    CheckpointError,
    load_strict,
    read_metadata,
    read_state_dict,
    write_safetensors,
)
from model.checkpoint.open_clip import OPEN_CLIP_PREFIX, convert_open_clip, sd2_text_config
from model.components import Components
from model.noise_augmentation import NoiseAugmentation
from model.sampling.schedule import ScheduleConfig
from model.unet import UNet, UNetConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
METADATA_KEY = "ldm_serve"
SD1_TEXT_CONFIG = dict(  # CLIP ViT-L/14 text tower, as used by SD 1.x
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _clip_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical HF CLIP names (`text_model.*`); very old checkpoints lack that level."""
    out = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}
    out.pop("text_model.embeddings.position_ids", None)  # a buffer, not a weight
    return out


def _for_module(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Match the installed transformers' naming (5.x drops the `text_model.` level)."""
    if any(k.startswith("text_model.") for k in module.state_dict()):
        return tensors
    return {k.removeprefix("text_model."): v for k, v in tensors.items()}


def _tokenizer_files(tokenizer: CLIPTokenizer) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}


def _tokenizer_from_files(files: dict[str, str]) -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / Path(name).name).write_text(text)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def save_single_file(
    components: Components, path: Path, dtype: torch.dtype = torch.float16
) -> Path:
    """Write a CompVis-layout .safetensors with our configs and tokenizer in its metadata."""
    c = components
    tensors = {UNET_PREFIX + k: v.to(dtype) for k, v in c.unet.state_dict().items()}
    tensors |= {VAE_PREFIX + k: v.to(dtype) for k, v in c.vae.state_dict().items()}
    text = _clip_keys(dict(c.text_encoder.state_dict()))
    tensors |= {CLIP_PREFIX + k: v.to(dtype) for k, v in text.items()}
    meta = {
        "unet": dataclasses.asdict(c.unet.config),
        "vae": dataclasses.asdict(c.vae.config),
        "text_encoder": c.text_encoder.config.to_diff_dict(),
        "scheduler": dataclasses.asdict(c.schedule),
        "tokenizer": _tokenizer_files(c.tokenizer),
    }
    if c.upscaler is not None:
        meta["upscaler"] = {
            "schedule": dataclasses.asdict(c.upscaler.schedule),
            "max_noise_level": c.upscaler.max_noise_level,
        }
    write_safetensors(tensors, path, {METADATA_KEY: meta})
    return path


def _as_tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _configs_from(meta: dict[str, Any] | None, config_dir: Path | None) -> dict[str, Any]:
    """Whatever structure information the metadata or a diffusers folder provides."""
    if meta is not None:
        upscaler = meta.get("upscaler")
        return {
            "unet": UNetConfig(**_as_tuples(meta["unet"])),
            "vae": AutoencoderConfig(**_as_tuples(meta["vae"])),
            "text": CLIPTextConfig(**meta["text_encoder"]),
            "schedule": ScheduleConfig.from_dict(meta["scheduler"]),
            "tokenizer": _tokenizer_from_files(meta["tokenizer"]),
            "upscaler": upscaler
            and NoiseAugmentation(
                ScheduleConfig.from_dict(upscaler["schedule"]), upscaler["max_noise_level"]
            ),
        }
    if config_dir is not None:

        def read(*parts: str) -> dict:
            return json.loads(config_dir.joinpath(*parts).read_text())

        return {
            "unet": configs.unet_config_from_diffusers(read("unet", "config.json")),
            "vae": configs.vae_config_from_diffusers(read("vae", "config.json")),
            "text": CLIPTextConfig.from_pretrained(config_dir / "text_encoder"),
            "schedule": ScheduleConfig.from_dict(read("scheduler", "scheduler_config.json")),
            "tokenizer": CLIPTokenizer.from_pretrained(config_dir / "tokenizer"),
            "upscaler": load_noise_augmentation(config_dir),
        }
    return {}


SDXL_CONDITIONER = "conditioner.embedders."  # SDXL's (and SD3's) text encoders, never SD 1.x/2.x


def load_single_file(path: Path, config_dir: Path | None = None) -> Components:
    """Components from one original-layout checkpoint file (fp32, CPU), strictly checked."""
    sd = read_state_dict(path)
    if any(key.startswith(SDXL_CONDITIONER) for key in sd):
        raise CheckpointError(f"{path.name} is an SDXL checkpoint ({SDXL_CONDITIONER}*): not "
                              "supported; ldm-serve runs Stable Diffusion 1.x/2.x and the "
                              "paper's LDMs")  # fmt: skip
    raw = read_metadata(path).get(METADATA_KEY)
    given = _configs_from(json.loads(raw) if raw else None, config_dir)
    unet_sd, vae_sd = _strip(sd, UNET_PREFIX), _strip(sd, VAE_PREFIX)
    if not unet_sd or not vae_sd:
        raise CheckpointError(
            f"{path.name}: no '{UNET_PREFIX}*' or '{VAE_PREFIX}*' keys: not a Stable Diffusion file"
        )
    open_clip = _strip(sd, OPEN_CLIP_PREFIX)
    if open_clip:  # SD 2.x: OpenCLIP ViT-H, penultimate layer
        text_sd = convert_open_clip(open_clip)
        text_config = given.get("text") or sd2_text_config(text_sd)
    else:
        text_sd = _clip_keys(_strip(sd, CLIP_PREFIX))
        text_config = given.get("text") or CLIPTextConfig(**SD1_TEXT_CONFIG)
    if not text_sd:
        raise CheckpointError(f"{path.name}: no text encoder weights found")
    try:
        unet_config = given.get("unet") or configs.infer_unet_config(unet_sd)
        vae_config = given.get("vae") or configs.infer_vae_config(vae_sd)
    except (KeyError, StopIteration, IndexError) as error:
        raise CheckpointError(f"{path.name}: cannot infer the model structure ({error})") from None
    if "tokenizer" not in given:
        raise CheckpointError(
            f"{path.name} carries no tokenizer: pass a diffusers folder of the same model family "
            "as the config directory (--config), as diffusers' from_single_file(config=...) does"
        )
    upscaler = given.get("upscaler")
    if upscaler is None and unet_config.num_classes is not None:  # x4-upscaling.yaml's values
        upscaler = NoiseAugmentation(ScheduleConfig(beta_start=0.0001, beta_end=0.02))
        vae_config = dataclasses.replace(vae_config, scaling_factor=0.08333)
    default_prediction = "v_prediction" if open_clip else "epsilon"
    default_schedule = ScheduleConfig(prediction_type=default_prediction)
    if upscaler is not None:  # linear_start 0.0001, linear_end 0.02 in x4-upscaling.yaml
        default_schedule = dataclasses.replace(default_schedule, beta_start=0.0001, beta_end=0.02)
    schedule = given.get("schedule") or default_schedule
    unet, vae = UNet(unet_config), AutoencoderKL(vae_config)
    text_encoder = CLIPTextModel(text_config)
    load_strict(unet, unet_sd, "unet")
    load_strict(vae, vae_sd, "vae")
    load_strict(text_encoder, _for_module(text_encoder, text_sd), "text_encoder")
    return Components(unet, vae, text_encoder.eval(), given["tokenizer"], schedule, upscaler)
