"""The diffusers folder layout: model_index.json plus unet/, vae/, text_encoder/, tokenizer/, ..."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as hf_logging

from model.autoencoder import AutoencoderKL
from model.checkpoint import configs, keymap
from model.checkpoint.files import CheckpointError, read_state_dict, write_safetensors
from model.components import Components
from model.noise_augmentation import NoiseAugmentation
from model.sampling.schedule import ScheduleConfig
from model.unet import UNet
from model.vq import VQAutoencoder

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.30.0",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}

UPSCALER_INDEX = {
    "_class_name": "StableDiffusionUpscalePipeline",
    "low_res_scheduler": ["diffusers", "DDPMScheduler"],
    "watermarker": [None, None],
}


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def pipeline_class(path: Path) -> str | None:
    """The folder's `_class_name` (StableDiffusionPipeline, LDMTextToImagePipeline, ...)."""
    return _read_json(path / "model_index.json").get("_class_name")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise CheckpointError(f"no weights in {folder} (expected {WEIGHT_NAMES[0]})")


def _load_network(folder: Path, name: str, build, read_config, prefixes, fused=None):  # noqa: ANN001, ANN202
    """Build a network on the meta device from config.json, then assign renamed, checked weights
    (`fused(config)`: the self-attention blocks whose q/k/v CompVis fuses, with their heads)."""
    try:
        config = read_config(_read_json(folder / "config.json"))
    except ValueError as error:  # a layout ours does not build (per-block depth, ...)
        raise CheckpointError(f"{name}: {error}") from None
    with torch.device("meta"):
        module = build(config)
    weights = _weights(folder)
    if fused is not None:
        weights = keymap.fuse_qkv(weights, fused(config))
    try:
        tensors = keymap.compvis_from_diffusers(
            list(module.state_dict()), weights, prefixes(config)
        )
    except KeyError as error:
        raise CheckpointError(f"{name}: {error.args[0]}") from None
    expected = module.state_dict()
    wrong = [k for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{name}: {len(wrong)} shape mismatches, e.g. {k}: checkpoint "
            f"{tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        )
    # Owned fp32 copies, not views into the file's mapping: those start wherever the header ends,
    # and CPU kernels sum misaligned weights in another order (same file bytes, another image).
    owned = {k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
             for k, v in tensors.items()}  # fmt: skip
    module.load_state_dict(owned, assign=True)
    return module


def load_unet(folder: Path) -> UNet:
    """A UNet from a diffusers `unet/` folder, strictly renamed and shape-checked."""
    return _load_network(
        folder, "unet", UNet, configs.unet_config_from_diffusers, keymap.unet_prefixes
    )


def load_vae(folder: Path) -> AutoencoderKL:
    """An AutoencoderKL from a diffusers `vae/` folder."""
    return _load_network(
        folder, "vae", AutoencoderKL, configs.vae_config_from_diffusers, keymap.vae_prefixes
    )


def load_unet2d(folder: Path) -> UNet:
    """A UNet without text from a diffusers UNet2DModel `unet/` folder (the paper's own models)."""
    return _load_network(
        folder,
        "unet",
        UNet,
        configs.unet2d_config_from_diffusers,
        keymap.unet_prefixes,
        fused=keymap.attention_heads,  # CompVis fuses each block's q, k and v in one `qkv`
    )


def load_vq(folder: Path) -> VQAutoencoder:
    """A VQ autoencoder from a diffusers VQModel `vqvae/` folder."""
    return _load_network(
        folder,
        "vqvae",
        lambda config: VQAutoencoder(*config),  # (AutoencoderConfig, codebook size)
        configs.vq_config_from_diffusers,
        lambda config: keymap.vq_prefixes(config[0]),
    )


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """transformers' 'Loading weights' / 'Writing model shards' bars off for the call, then as
    they were."""
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def check_family(path: Path) -> None:
    """Refuse, naming why, a folder of another model family: a transformer (SD3, Flux, PixArt)
    or SDXL's UNet, whose added time and text embeddings ours does not have."""
    kind = pipeline_class(path) or "this folder"
    runs = (
        "ldm-serve runs UNet latent diffusion models (Stable Diffusion 1.x/2.x, the paper's LDMs)"
    )
    if not (path / "unet").is_dir():
        dit = (path / "transformer").is_dir()
        raise CheckpointError(
            f"{kind} has {'a transformer/ (a DiT)' if dit else 'no unet/'}: {runs}"
        )
    added = _read_json(path / "unet" / "config.json").get("addition_embed_type")
    if added is not None:
        raise CheckpointError(f"{kind}: a UNet with addition_embed_type {added!r} (SDXL's added "
                              f"time and text embeddings) is not supported: {runs}")  # fmt: skip


def load_diffusers(path: Path) -> Components:
    """All components of a diffusers Stable Diffusion folder, on the CPU in fp32."""
    if not is_diffusers_folder(path):
        raise CheckpointError(f"{path} is not a diffusers folder (no model_index.json)")
    check_family(path)
    try:
        with no_progress_bar():  # a worker's log is one line per event, not a tqdm bar
            text_encoder = CLIPTextModel.from_pretrained(
                path / "text_encoder", local_files_only=True
            )
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"text encoder/tokenizer in {path}: {error}") from None
    schedule = ScheduleConfig.from_dict(_read_json(path / "scheduler" / "scheduler_config.json"))
    return Components(
        unet=load_unet(path / "unet"),
        vae=load_vae(path / "vae"),
        text_encoder=text_encoder.float().eval(),
        tokenizer=tokenizer,
        schedule=schedule,
        upscaler=load_noise_augmentation(path),
    )


def load_noise_augmentation(path: Path) -> NoiseAugmentation | None:
    """The x4 upscaler layout's `low_res_scheduler/` and `max_noise_level`; None for others."""
    if not (path / "low_res_scheduler").is_dir():
        return None
    config = _read_json(path / "low_res_scheduler" / "scheduler_config.json")
    max_level = _read_json(path / "model_index.json").get("max_noise_level", 350)
    return NoiseAugmentation(ScheduleConfig.from_dict(config), int(max_level))


def schedule_to_diffusers(schedule: ScheduleConfig) -> dict:
    """scheduler_config.json for a ScheduleConfig (DDIMScheduler class, SD defaults)."""
    return {"_class_name": "DDIMScheduler", "clip_sample": False, **dataclasses.asdict(schedule)}


def save_diffusers(
    path: Path,
    *,
    unet: UNet,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    schedule: ScheduleConfig,
    dtype: torch.dtype = torch.float16,
    upscaler: NoiseAugmentation | None = None,
) -> Path:
    """Write a diffusers Stable Diffusion folder (StableDiffusionUpscalePipeline's layout for an
    upscaler) that both ldm-serve and diffusers load."""
    path.mkdir(parents=True, exist_ok=True)
    index = dict(MODEL_INDEX)
    if upscaler is not None:
        index |= UPSCALER_INDEX | {"max_noise_level": upscaler.max_noise_level}
        del index["requires_safety_checker"]  # not a StableDiffusionUpscalePipeline argument
        (path / "low_res_scheduler").mkdir(exist_ok=True)
        low_res = {"_class_name": "DDPMScheduler", **dataclasses.asdict(upscaler.schedule)}
        (path / "low_res_scheduler" / "scheduler_config.json").write_text(
            json.dumps(low_res, indent=2)
        )
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    parts = [
        (
            "unet",
            unet,
            configs.unet_config_to_diffusers(unet.config),
            keymap.unet_prefixes(unet.config),
        ),
        ("vae", vae, configs.vae_config_to_diffusers(vae.config), keymap.vae_prefixes(vae.config)),
    ]
    for name, module, config, table in parts:
        folder = path / name
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        tensors = {k: v.to(dtype) for k, v in module.state_dict().items()}
        write_safetensors(keymap.diffusers_from_compvis(tensors, table), folder / WEIGHT_NAMES[0])
    original = next(text_encoder.parameters()).dtype
    with no_progress_bar():  # transformers' 'Writing model shards' bar: not for a one-file save
        text_encoder.to(dtype).save_pretrained(path / "text_encoder", safe_serialization=True)
    text_encoder.to(original)  # leave the caller's model as it was
    tokenizer.save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(schedule_to_diffusers(schedule), indent=2)
    )
    return path
