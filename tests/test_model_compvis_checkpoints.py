"""The LDM paper's models in their original CompVis form (.ckpt + YAML) and back: for each of the
four kinds, a tiny diffusers folder -> `ldm-serve convert` -> .ckpt + .yaml -> the same images as
the folder (diffusers' pipelines where they exist) -> a folder diffusers loads again. The CompVis
key layout is checked against other code than our writer: diffusers' own LDM converters and
YAML reader (single_file_utils), and CompVis' x_transformers BERT and legacy attention written
here from their source (testkit/tiny_compvis.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint.compvis import find_compvis, load_compvis, save_compvis
from model.checkpoint.ldm_folders import load_ldm_folder
from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from model.txt2img import run
from testkit import tiny_compvis as tiny
from tests import test_model_ldm_superres as sr
from tests import test_model_ldm_text2img as t2i
from tests import test_model_ldm_uncond as uncond
from tests.compvis_harness import WEIGHTS, Converted, converted_models, read_yaml, state_dict
from tests.conftest import REPO
from tests.test_model_parity import assert_close


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Converted]:
    return converted_models(tmp_path_factory.mktemp("compvis"))


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [
        k for k in ours if not torch.equal(ours[k], theirs[k])
    ]


def assert_diffusers_loads_the_same(reference: Any, back: Path) -> None:
    """diffusers loads the folder written back from the .ckpt as the original: same weights,
    schedule and tokens (so the same images)."""
    pipe = type(reference).from_pretrained(str(back), local_files_only=True)
    for name, module in reference.components.items():
        if isinstance(module, torch.nn.Module):
            assert_same(getattr(pipe, name).state_dict(), module.state_dict())
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
            "steps_offset", "set_alpha_to_one", "timestep_spacing", "clip_sample")  # fmt: skip
    assert {k: pipe.scheduler.config[k] for k in keys} == {
        k: reference.scheduler.config[k] for k in keys
    }
    if "tokenizer" in reference.components:
        assert pipe.tokenizer(t2i.PROMPT).input_ids == reference.tokenizer(t2i.PROMPT).input_ids


@pytest.mark.slow  # ~15-25 s on 2 shared cores; the unconditional parity stays fast
def test_text2img_ckpt_draws_what_diffusers_draws(models: Callable[[str], Converted]) -> None:
    m = models("text2img")
    assert (m.ckpt.parent / "tokenizer").is_dir()  # BERTEmbedder's tokenizer is not in a .ckpt
    assert "ldm_serve" not in read_yaml(m.ckpt)  # CompVis' own DDIM conventions: nothing extra
    # x.yaml and tokenizer/ are found beside x.ckpt
    assert_close(t2i.ours(m.ckpt, "ddim", [3]), t2i.theirs(m.folder, "ddim", [3]))
    assert_diffusers_loads_the_same(t2i.reference(m.folder), m.back)


def test_bert_weights_run_in_compvis_x_transformers(models: Callable[[str], Converted]) -> None:
    """The .ckpt's cond_stage_model.transformer.* load strictly into CompVis' TransformerWrapper
    (written from x_transformer.py) and encode as diffusers' LDMBertModel does."""
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel

    m = models("text2img")
    bert = LDMBertModel.from_pretrained(m.folder / "bert").eval()
    params = read_yaml(m.ckpt)["model"]["params"]["cond_stage_config"]["params"]
    x = tiny.XTransformer(params["vocab_size"], params["max_seq_len"], params["n_embed"],
                          params["n_layer"]).eval()  # fmt: skip
    x.load_state_dict(state_dict(m.ckpt, "cond_stage_model.transformer."), strict=True)
    tokens = torch.randint(0, params["vocab_size"], (2, 77))
    with torch.no_grad():
        expected = bert(tokens).last_hidden_state  # (2, 77, 32)
        assert torch.allclose(x(tokens), expected, atol=1e-5) and expected.std() > 0.1


def test_text2img_layout_is_what_diffusers_converts(models: Callable[[str], Converted]) -> None:
    """diffusers' converters from CompVis names (single_file_utils) give the folder's weights
    back exactly, and its YAML reader the folder's UNet and autoencoder configs."""
    from diffusers.loaders import single_file_utils as sfu

    m = models("text2img")
    sd, config = state_dict(m.ckpt), json.loads((m.folder / "unet" / "config.json").read_text())
    assert_same(sfu.convert_ldm_unet_checkpoint(sd, config), load_file(m.folder / "unet" / WEIGHTS))
    vae_config = json.loads((m.folder / "vqvae" / "config.json").read_text())
    vae = sfu.convert_ldm_vae_checkpoint(sd, vae_config)
    assert_same(vae, load_file(m.folder / "vqvae" / WEIGHTS))
    document = read_yaml(m.ckpt)
    theirs = sfu.create_unet_diffusers_config_from_ldm(document, sd)
    keys = ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
            "cross_attention_dim", "attention_head_dim", "in_channels", "out_channels")  # fmt: skip
    for key in keys:
        assert list(np.atleast_1d(theirs[key])) == list(np.atleast_1d(config[key])), key
    theirs = sfu.create_vae_diffusers_config_from_ldm(document, sd)
    for key in ("block_out_channels", "latent_channels", "layers_per_block", "scaling_factor"):
        assert theirs[key] == vae_config[key], key


def test_unconditional_zoo_folder_draws_what_diffusers_draws(
    models: Callable[[str], Converted], tmp_path: Path
) -> None:
    """A model-zoo folder (config.yaml + model.ckpt); the diffusers folder's DDIM conventions
    (steps_offset 0) travel in the YAML's `ldm_serve:` section, which CompVis never reads."""
    m = models("uncond")
    assert read_yaml(m.ckpt)["ldm_serve"] == {"steps_offset": 0, "set_alpha_to_one": True}
    zoo = tmp_path / "celebahq"
    zoo.mkdir()
    shutil.copy(m.ckpt, zoo / "model.ckpt")
    shutil.copy(m.ckpt.with_suffix(".yaml"), zoo / "config.yaml")
    images = uncond.ours(BatchEngine(load_pipeline(zoo)), [uncond.spec("ddim", 3)])
    assert_close(images, uncond.theirs(m.folder, "ddim", [3]))
    assert_diffusers_loads_the_same(uncond.reference(m.folder), m.back)


def test_attention_blocks_are_compvis_legacy_qkv(models: Callable[[str], Converted]) -> None:
    """Resnets, convolutions and the VQ autoencoder: diffusers' converters give the folder's
    weights; self-attention (qkv fused, which those do not split): CompVis' AttentionBlock
    on the .ckpt's weights computes what diffusers' attention does on the folder's."""
    from diffusers import UNet2DModel
    from diffusers.loaders import single_file_utils as sfu

    m = models("uncond")
    sd, config = state_dict(m.ckpt), json.loads((m.folder / "unet" / "config.json").read_text())
    folder = load_file(m.folder / "unet" / WEIGHTS)
    converted = sfu.convert_ldm_unet_checkpoint(sd, config)
    plain = {k: v for k, v in converted.items() if ".attentions." not in k}
    assert_same(plain, {k: v for k, v in folder.items() if ".attentions." not in k})
    vq = load_file(m.folder / "vqvae" / WEIGHTS)
    vq_config = json.loads((m.folder / "vqvae" / "config.json").read_text())
    vq_converted = sfu.convert_ldm_vae_checkpoint(sd, vq_config)
    vq_converted["quantize.embedding.weight"] = sd["first_stage_model.quantize.embedding.weight"]
    assert_same(vq_converted, vq)
    unet = UNet2DModel.from_pretrained(m.folder / "unet").eval()
    params = read_yaml(m.ckpt)["model"]["params"]["unet_config"]["params"]
    heads = params.get("num_heads") or 64 // params["num_head_channels"]  # 64-channel level
    x = torch.randn(2, 64, 4, 4)
    for theirs, ours in ((unet.mid_block.attentions[0], "middle_block.1."),
                         (unet.down_blocks[1].attentions[0], "input_blocks.3.1.")):  # fmt: skip
        p = state_dict(m.ckpt, f"model.diffusion_model.{ours}")
        with torch.no_grad():
            assert torch.allclose(tiny.compvis_attention_block(x, p, heads), theirs(x), atol=1e-5)


@pytest.mark.slow  # ~15-25 s on 2 shared cores; the unconditional parity stays fast
def test_super_resolution_ckpt_with_a_given_yaml(
    models: Callable[[str], Converted], tmp_path: Path
) -> None:
    m = models("superres")
    given = tmp_path / "bsr_sr.yaml"  # anywhere, by name (--config): not found beside
    shutil.copy(m.ckpt.with_suffix(".yaml"), given)
    assert read_yaml(m.ckpt)["model"]["params"]["conditioning_key"] == "concat"
    pipe = load_pipeline(m.ckpt, config_dir=given)
    assert pipe.tasks == ("upscale",) and pipe.latent_scale == 1.0
    images = sr.ours(BatchEngine(pipe), [sr.spec("ddim", 5)])
    assert_close(images, sr.theirs(m.folder, "ddim", [5]))
    assert_diffusers_loads_the_same(sr.reference(m.folder), m.back)


def class_images(model: Path) -> np.ndarray:
    specs = [SampleSpec(seed=s, width=32, height=32, steps=6, sampler="ddim", guidance_scale=3.0,
                        class_label=label) for s, label in ((1, 7), (2, 999))]  # fmt: skip
    return np.stack([np.asarray(image) for image in run(BatchEngine(load_pipeline(model)), specs)])


@pytest.mark.slow  # ~15-25 s on 2 shared cores; the unconditional parity stays fast
def test_class_conditional_ckpt_is_cin256s_layout(models: Callable[[str], Converted]) -> None:
    """1000 ImageNet classes + the null class 1000, as cin256-v2.yaml: nothing beyond CompVis'
    ClassEmbedder(n_classes=1001) is written for it; the same images, the folder back."""
    from diffusers import UNet2DConditionModel

    m = models("classcond")
    params = read_yaml(m.ckpt)["model"]["params"]
    assert params["cond_stage_config"]["params"]["n_classes"] == 1001
    assert set(read_yaml(m.ckpt).get("ldm_serve", {})) <= {"steps_offset", "set_alpha_to_one"}
    assert list(state_dict(m.ckpt, "cond_stage_model.")) == ["embedding.weight"]
    pipe = load_pipeline(m.ckpt)
    assert pipe.conditioner.config.null_class == 1000 and pipe.guidable
    assert pipe.conditioner.config.class_names[0].startswith("tench")
    images = class_images(m.ckpt)
    assert np.array_equal(images, class_images(m.folder)) and images.std() > 5
    assert load_pipeline(m.back).conditioner.config == pipe.conditioner.config
    ours = UNet2DConditionModel.from_pretrained(m.back / "unet").state_dict()
    assert_same(ours, UNet2DConditionModel.from_pretrained(m.folder / "unet").state_dict())


def test_other_null_classes_travel_in_the_ldm_serve_section(tmp_path: Path) -> None:
    components = load_ldm_folder(tiny.build_compvis_classcond(tmp_path / "cin10", classes=10))
    ckpt = tmp_path / "cin10.ckpt"
    save_compvis(components, ckpt, ckpt.with_suffix(".yaml"), torch.float32, latent_size=8)
    extras = read_yaml(ckpt)["ldm_serve"]
    assert extras["null_class"] == 10 and extras["class_names"][3] == "class 3"
    config = load_compvis(*find_compvis(ckpt)).class_embedder.config
    assert config == components.class_embedder.config
    assert config.class_names == components.class_embedder.config.class_names


@pytest.mark.slow  # two processes of a few seconds each (imports)
def test_the_cli_converts_as_a_process(models: Callable[[str], Converted], tmp_path: Path) -> None:
    m = models("text2img")
    ckpt, back = tmp_path / "ldm.ckpt", tmp_path / "back"
    for source, destination in ((m.folder, ckpt), (ckpt, back)):
        command = ["convert", str(source), str(destination), "--dtype", "float32"]
        subprocess.run([sys.executable, "-m", "cli.main", *command], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
    assert_same(state_dict(ckpt), state_dict(m.ckpt))
    assert ckpt.with_suffix(".yaml").read_text() == m.ckpt.with_suffix(".yaml").read_text()
    assert_same(load_file(back / "unet" / WEIGHTS), load_file(m.back / "unet" / WEIGHTS))
