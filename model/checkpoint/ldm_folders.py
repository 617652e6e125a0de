"""diffusers ports of the LDM paper's own pipelines (CompVis/ldm-*): `LDMTextToImagePipeline`
(LDM-KL-8-G: `bert/` LDMBert + BERT tokenizer, `unet/`, a KL autoencoder in `vqvae/`),
`LDMPipeline` (unconditional: a UNet2DModel `unet/` on a VQModel's latents, `vqvae/`) and
`LDMSuperResolutionPipeline` (the same, the UNet also reading the low-res RGB image: LDM-SR).
diffusers has no pipeline for the paper's class-conditional ImageNet model: ldm-serve's
`LDMClassConditionalPipeline` folder is the unconditional one's with a cross-attention
`UNet2DConditionModel`, `class_embedder/` (config.json, model.safetensors: `embedding.weight`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from transformers import BertTokenizer

from model.autoencoder import AutoencoderKL
from model.checkpoint.diffusers_folder import (
    load_unet,
    load_unet2d,
    load_vae,
    load_vq,
    pipeline_class,
)
from model.checkpoint.files import CheckpointError, load_strict, read_state_dict
from model.class_embedder import ClassEmbedder, ClassEmbedderConfig, default_class_names
from model.components import Components
from model.ldm_bert import LDMBert, LDMBertConfig
from model.sampling.schedule import ScheduleConfig
from model.vq import VQAutoencoder

TEXT_TO_IMAGE = "LDMTextToImagePipeline"
UNCONDITIONAL = "LDMPipeline"
SUPER_RESOLUTION = "LDMSuperResolutionPipeline"
CLASS_CONDITIONAL = "LDMClassConditionalPipeline"  # ldm-serve's layout (no diffusers pipeline)
CLASS_EMBEDDER_WEIGHTS = "model.safetensors"
# DDIMScheduler's own defaults: the paper's hub configs predate steps_offset and set_alpha_to_one,
# and diffusers fills them from the class, not from Stable Diffusion's values (ScheduleConfig's).
DDIM_DEFAULTS = {
    "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "set_alpha_to_one": True,
    "steps_offset": 0, "prediction_type": "epsilon", "timestep_spacing": "leading",
}  # fmt: skip


def load_ldm_folder(path: Path) -> Components | None:
    """The components of a folder of one of the paper's pipelines, None for other folders."""
    loaders = {TEXT_TO_IMAGE: load_text_to_image, UNCONDITIONAL: load_unconditional,
               SUPER_RESOLUTION: load_super_resolution,
               CLASS_CONDITIONAL: load_class_conditional}  # fmt: skip
    loader = loaders.get(pipeline_class(path) or "")
    return loader(path) if loader else None


def read_schedule(path: Path) -> ScheduleConfig:
    """The folder's `scheduler/` config, missing keys taken from its class's defaults."""
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    defaults = DDIM_DEFAULTS if config.get("_class_name") == "DDIMScheduler" else {}
    return ScheduleConfig.from_dict(defaults | config)


BERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def load_ldm_bert(folder: Path) -> LDMBert:
    """LDMBert from a transformers-style `bert/` folder (config.json + model.safetensors)."""
    config = LDMBertConfig.from_dict(json.loads((folder / "config.json").read_text()))
    weights = next((folder / name for name in BERT_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"no weights in {folder} (expected {BERT_WEIGHTS[0]})")
    bert = LDMBert(config)
    load_strict(bert, read_state_dict(weights), "bert")
    return bert.float().eval()


def load_text_to_image(path: Path) -> Components:
    """LDM-KL-8-G from an LDMTextToImagePipeline folder, on the CPU in fp32."""
    try:
        tokenizer = BertTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"BERT tokenizer in {path}: {error}") from None
    return Components(
        unet=load_unet(path / "unet"),
        vae=load_vae(path / "vqvae"),
        text_encoder=load_ldm_bert(path / "bert"),
        tokenizer=tokenizer,
        schedule=read_schedule(path),
    )


def load_unconditional(path: Path) -> Components:
    """An unconditional LDM (LDM-VQ-4 on CelebA-HQ, ...) from an LDMPipeline folder: no text;
    latents decode at the VQModel config's scaling factor, as the pipeline divides by it."""
    components = Components(
        unet=load_unet2d(path / "unet"),
        vae=load_autoencoder(path / "vqvae"),
        text_encoder=None,
        tokenizer=None,
        schedule=read_schedule(path),
    )
    if components.unet.config.in_channels != components.vae.config.latent_channels:
        raise CheckpointError(f"{path}: the UNet's input is not the autoencoder's latent")
    return components


def load_autoencoder(folder: Path) -> AutoencoderKL | VQAutoencoder:
    """The `vqvae/` folder's autoencoder: a VQModel, or an AutoencoderKL (the paper's KL-reg.
    unconditional models, e.g. LSUN-churches LDM-KL-8, which LDMPipeline decodes the same way)."""
    config = json.loads((folder / "config.json").read_text())
    return load_vae(folder) if config.get("_class_name") == "AutoencoderKL" else load_vq(folder)


def load_super_resolution(path: Path) -> Components:
    """LDM-SR from an LDMSuperResolutionPipeline folder: the UNet reads the latent and the
    low-res RGB image (in_channels = latent + 3); the pipeline decodes its latents unscaled,
    whatever the VQModel config's scaling factor says, so the scale here is 1."""
    vae = load_vq(path / "vqvae")
    vae.config = replace(vae.config, scaling_factor=1.0)
    components = Components(
        unet=load_unet2d(path / "unet"),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        schedule=read_schedule(path),
    )
    if components.unet.config.in_channels != vae.config.latent_channels + 3:
        raise CheckpointError(f"{path}: the UNet's input is not the latent plus an RGB image")
    return components


def load_class_embedder(folder: Path) -> ClassEmbedder:
    """The class table from a `class_embedder/` folder; ImageNet's names for 1000 classes."""
    config = ClassEmbedderConfig.from_dict(json.loads((folder / "config.json").read_text()))
    if not config.class_names:
        config = replace(config, class_names=default_class_names(config.labels))
    embedder = ClassEmbedder(config)
    load_strict(embedder, read_state_dict(folder / CLASS_EMBEDDER_WEIGHTS), "class_embedder")
    return embedder.float().eval()


def load_class_conditional(path: Path) -> Components:
    """The paper's class-conditional LDM (cin256) from an LDMClassConditionalPipeline folder:
    cross-attention on one class token, a VQ autoencoder, no text."""
    embedder = load_class_embedder(path / "class_embedder")
    components = Components(
        unet=load_unet(path / "unet"),
        vae=load_vq(path / "vqvae"),
        text_encoder=None,
        tokenizer=None,
        schedule=read_schedule(path),
        class_embedder=embedder,
    )
    if components.unet.config.context_dim != embedder.config.embed_dim:
        raise CheckpointError(f"{path}: the class tokens are not the UNet's context width")
    return components
