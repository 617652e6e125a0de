"""diffusers ports of the LDM paper's own pipelines (CompVis/ldm-*): `LDMTextToImagePipeline`
(LDM-KL-8-G: `bert/` LDMBert + BERT tokenizer, `unet/`, a KL autoencoder in `vqvae/`)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import BertTokenizer

from model.checkpoint.diffusers_folder import load_unet, load_vae, pipeline_class
from model.checkpoint.files import CheckpointError, load_strict, read_state_dict
from model.components import Components
from model.ldm_bert import LDMBert, LDMBertConfig
from model.sampling.schedule import ScheduleConfig

TEXT_TO_IMAGE = "LDMTextToImagePipeline"


def load_ldm_folder(path: Path) -> Components | None:
    """The components of a folder of one of the paper's pipelines, None for other folders."""
    return load_text_to_image(path) if pipeline_class(path) == TEXT_TO_IMAGE else None


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
    schedule = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return Components(
        unet=load_unet(path / "unet"),
        vae=load_vae(path / "vqvae"),
        text_encoder=load_ldm_bert(path / "bert"),  # type: ignore[arg-type]
        tokenizer=tokenizer,
        schedule=ScheduleConfig.from_dict(schedule),
    )
