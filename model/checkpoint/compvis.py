"""The LDM paper's original CompVis checkpoints: a `.ckpt` of `{"state_dict": ...}` (read with
torch.load(weights_only=True)) plus the YAML it was trained with (compvis_config.py), for the four
kinds of models (Rombach et al. 2022): text-to-image (LDM-KL-8-G, BERTEmbedder), unconditional,
super-resolution (LDM-SR, the low-res image concatenated) and class-conditional (ClassEmbedder).

The state dict is ddpm.LatentDiffusion's: `model.diffusion_model.*` (our UNet's names),
`first_stage_model.*` (our autoencoders' names), `cond_stage_model.*` (compvis_bert.py, or the
class table `embedding.weight`). BERTEmbedder downloads bert-base-uncased's tokenizer when it runs;
here a tokenizer folder is given or found beside the checkpoint, never fetched.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
import yaml as pyyaml
from transformers import BertTokenizer

from model.autoencoder import AutoencoderKL
from model.checkpoint import compvis_mapping as mapping
from model.checkpoint.compvis_bert import bert_config, compvis_from_ldm_bert, ldm_bert_from_compvis
from model.checkpoint.compvis_config import parse_config, read_config
from model.checkpoint.files import CheckpointError, load_strict, read_state_dict
from model.checkpoint.ldm_folders import (
    CLASS_CONDITIONAL,
    SUPER_RESOLUTION,
    TEXT_TO_IMAGE,
    UNCONDITIONAL,
)
from model.checkpoint.single_file import SDXL_CONDITIONER
from model.class_embedder import ClassEmbedder
from model.components import Components
from model.ldm_bert import LDMBert
from model.sampling.schedule import alphas_cumprod
from model.unet import UNet
from model.vq import VQAutoencoder

log = logging.getLogger(__name__)
UNET, FIRST_STAGE, COND_STAGE = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
YAML_SUFFIXES = (".yaml", ".yml")
ZOO_CONFIG, ZOO_CHECKPOINT, TOKENIZER = "config.yaml", "model.ckpt", "tokenizer"
# Stable Diffusion's text encoders: YAMLs naming them are single_file.py's business, not ours.
SD_TEXT_ENCODERS = ("ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder")  # fmt: skip


class CompVisFiles(NamedTuple):
    """Where a CompVis model's parts are: checkpoint, YAML, tokenizer folder (text models)."""

    ckpt: Path
    yaml: Path
    tokenizer: Path | None


def find_compvis(
    path: Path, config: Path | None = None, tokenizer: Path | None = None
) -> CompVisFiles | None:
    """A CompVis model at `path`: a checkpoint with `config` a .yaml, or with a same-stem .yaml
    or a config.yaml beside it, or a model-zoo folder (config.yaml + model.ckpt); None for
    anything else (diffusers folders, Stable Diffusion files: their YAMLs name CLIP encoders).
    `config` may also be a folder to take the tokenizer from (`tokenizer/` or vocab files)."""
    explicit = config if config is not None and config.suffix in YAML_SUFFIXES else None
    if explicit is not None and not explicit.is_file():
        raise CheckpointError(f"config not found: {explicit}")
    if path.is_dir():
        if (path / "model_index.json").is_file() or not (explicit or (path / ZOO_CONFIG).is_file()):
            return None
        ckpt, yaml = path / ZOO_CHECKPOINT, explicit or path / ZOO_CONFIG
        if not ckpt.is_file():
            raise CheckpointError(f"{path}: a CompVis model folder holds {ZOO_CHECKPOINT} beside "
                                  f"{ZOO_CONFIG}; found no {ZOO_CHECKPOINT}")  # fmt: skip
    elif path.is_file():
        beside = (path.with_suffix(".yaml"), path.parent / ZOO_CONFIG)
        ckpt, yaml = path, explicit or next((p for p in beside if p.is_file()), None)
        if yaml is None or explicit is None and names_stable_diffusion(yaml):
            return None
    else:
        return None
    borrowed = config if config is not None and config.is_dir() else None
    found = _tokenizer_folder(borrowed, ckpt.parent / TOKENIZER, yaml.parent / TOKENIZER)
    return CompVisFiles(ckpt, yaml, tokenizer or found)


def names_stable_diffusion(path: Path) -> bool:
    """Whether a YAML is Stable Diffusion's (a CLIP text encoder), left to single_file.py."""
    try:
        cond = pyyaml.safe_load(path.read_text())["model"]["params"]["cond_stage_config"]
    except (pyyaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, OSError):
        return False
    return isinstance(cond, dict) and cond.get("target") in SD_TEXT_ENCODERS


def _tokenizer_folder(*candidates: Path | None) -> Path | None:
    for folder in candidates:
        if folder is None or not folder.is_dir():
            continue
        if (folder / TOKENIZER).is_dir():
            return folder / TOKENIZER
        if (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file():
            return folder
    return None


def load_compvis(ckpt: Path, yaml: Path, tokenizer_dir: Path | None = None) -> Components:
    """Components (fp32, CPU) of a CompVis checkpoint and its YAML, strictly checked."""
    config = read_config(yaml)
    kind = mapping.paper_kind_of(config, yaml.name)
    tokenizer = _tokenizer(ckpt, tokenizer_dir) if kind == TEXT_TO_IMAGE else None  # fail fast
    sd = read_state_dict(ckpt)
    parts = {p: {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
             for p in (UNET, FIRST_STAGE, COND_STAGE)}  # fmt: skip
    if not parts[UNET] or not parts[FIRST_STAGE]:
        raise CheckpointError(f"{ckpt.name}: no '{UNET}*' or '{FIRST_STAGE}*' weights: not a "
                              "LatentDiffusion checkpoint")  # fmt: skip
    if any(k.startswith("model_ema.") for k in sd):
        log.warning("%s: EMA weights present; using model.diffusion_model (as diffusers)", ckpt)
    schedule = mapping.schedule(config)
    trained = sd.get("alphas_cumprod")  # ddpm.register_schedule's buffer, where kept
    if trained is not None and not torch.allclose(trained.float(), alphas_cumprod(schedule),
                                                  atol=1e-5):  # fmt: skip
        raise CheckpointError(f"{ckpt.name}: its alphas_cumprod differ from {yaml.name}'s beta "
                              "schedule: the YAML is not this checkpoint's")  # fmt: skip
    vae_config = mapping.autoencoder_config(config)
    if "scale_factor" in sd:  # scale_by_std: the factor measured in training is a buffer
        vae_config = replace(vae_config, scaling_factor=float(sd["scale_factor"]))
    unet = UNet(mapping.unet_config(config))
    load_strict(unet, parts[UNET], f"unet ({UNET}*)")
    if config.first_stage.kind == "kl":
        vae = AutoencoderKL(vae_config)
    else:
        vae = VQAutoencoder(vae_config, config.first_stage.n_embed)
        parts[FIRST_STAGE].pop("quantize.used", None)  # `remap`'s index table: indices only
    load_strict(vae, parts[FIRST_STAGE], f"first stage ({FIRST_STAGE}*)")
    text_encoder = class_embedder = None
    if kind == TEXT_TO_IMAGE:
        text_encoder = LDMBert(bert_config(config.cond_stage))
        cond = {k.removeprefix("transformer."): v for k, v in parts[COND_STAGE].items()}
        bert = ldm_bert_from_compvis(cond, config.cond_stage.n_layer, ckpt.name)
        load_strict(text_encoder, bert, f"text encoder ({COND_STAGE}transformer.*)")
    elif kind == CLASS_CONDITIONAL:
        class_embedder = ClassEmbedder(mapping.class_embedder_config(config))
        load_strict(class_embedder, parts[COND_STAGE], f"class embedder ({COND_STAGE}*)")
    elif parts[COND_STAGE]:
        raise CheckpointError(f"{ckpt.name}: {COND_STAGE}* weights, but {yaml.name} has none")
    for module in (text_encoder, class_embedder):
        if module is not None:
            module.eval()
    return Components(unet.float().eval(), vae.float().eval(), text_encoder, tokenizer, schedule,
                      class_embedder=class_embedder)  # fmt: skip


def _tokenizer(ckpt: Path, folder: Path | None) -> BertTokenizer:
    if folder is None:
        raise CheckpointError(
            f"{ckpt.name} is a text-to-image LDM (BERTEmbedder), whose tokenizer is not in the "
            "checkpoint (CompVis downloads bert-base-uncased's): put its files (vocab.txt or "
            f"tokenizer.json) in {ckpt.parent / TOKENIZER}/, or pass a folder holding them "
            "(--tokenizer, or --config an LDMTextToImagePipeline folder)"
        )
    try:
        return BertTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"BERT tokenizer in {folder}: {error}") from None


def paper_kind(components: Components) -> str | None:
    """Which of the paper's pipelines a model is (ldm_folders' names), None for Stable Diffusion."""
    c = components
    if isinstance(c.text_encoder, LDMBert):
        return TEXT_TO_IMAGE
    if c.class_embedder is not None:
        return CLASS_CONDITIONAL
    if c.text_encoder is None and c.upscaler is None:
        concat = c.unet.config.in_channels != c.vae.config.latent_channels
        return SUPER_RESOLUTION if concat else UNCONDITIONAL
    return None


def save_compvis(
    components: Components,
    ckpt: Path,
    yaml: Path,
    dtype: torch.dtype = torch.float16,
    latent_size: int | None = None,
) -> Path:
    """Write a paper model as CompVis does: `ckpt` ({"state_dict": plain tensors}, so that
    weights_only loads it), its YAML, and for text models the tokenizer in `tokenizer/` beside.
    `latent_size`: the latent size the UNet was trained at (UNetModel's `image_size`)."""
    kind = paper_kind(components)
    if kind is None:
        raise CheckpointError("Stable Diffusion models have no CompVis .ckpt + .yaml form here: "
                              "write them as a .safetensors single file")  # fmt: skip
    c = components
    document = mapping.compvis_yaml(c, kind, latent_size)
    mapping.paper_kind_of(parse_config(document, yaml.name), yaml.name)  # it must read back
    tensors = {UNET + k: v for k, v in c.unet.state_dict().items()}
    tensors |= {FIRST_STAGE + k: v for k, v in c.vae.state_dict().items()}
    if kind == TEXT_TO_IMAGE:
        layers = c.text_encoder.config.encoder_layers
        tensors |= compvis_from_ldm_bert(dict(c.text_encoder.state_dict()), layers)
    elif kind == CLASS_CONDITIONAL:
        tensors |= {COND_STAGE + k: v for k, v in c.class_embedder.state_dict().items()}
    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in tensors.items()}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tensors}, ckpt)
    header = "# CompVis/latent-diffusion config, written by ldm-serve convert\n"
    yaml.write_text(header + pyyaml.safe_dump(document, sort_keys=False))
    if kind == TEXT_TO_IMAGE:
        c.tokenizer.save_pretrained(ckpt.parent / TOKENIZER)
    return ckpt


def explain_missing_config(path: Path, error: CheckpointError) -> CheckpointError:
    """single_file.py's error for `path`, or, when it is a CompVis checkpoint of a paper model
    (BERT or class conditioning, or none: no CLIP), an error saying that its YAML is missing."""
    try:
        keys = list(read_state_dict(path))
    except CheckpointError:
        return error
    cond = [k for k in keys if k.startswith(COND_STAGE)]
    paper = not cond or any(k.startswith((f"{COND_STAGE}transformer.attn_layers.",
                                          f"{COND_STAGE}embedding.")) for k in cond)  # fmt: skip
    sdxl = any(k.startswith(SDXL_CONDITIONER) for k in keys)  # single_file.py says what it is
    if f"{UNET}input_blocks.0.0.weight" not in keys or not paper or sdxl:
        return error
    return CheckpointError(
        f"{path.name} is a CompVis checkpoint of an LDM whose structure is in the YAML it was "
        f"trained with: pass it (--config FILE.yaml), or put {path.stem}.yaml or {ZOO_CONFIG} "
        "beside the checkpoint"
    )
