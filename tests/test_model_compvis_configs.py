"""What the paper's CompVis YAMLs say and what is refused: the released configs read as the
networks they describe (parameter counts against diffusers' own reader), `target:` names looked
up in an allow-list and never imported, object-building pickles and YAML tags refused, missing
YAMLs and tokenizers named, training buffers checked."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from cli.main import main
from model.checkpoint.compvis import find_compvis, save_compvis
from model.checkpoint.files import CheckpointError
from model.checkpoint.ldm_folders import load_ldm_folder
from model.pipeline import load_pipeline
from testkit import tiny_compvis as tiny
from tests.compvis_harness import Converted, converted_models, read_yaml, state_dict


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Converted]:
    return converted_models(tmp_path_factory.mktemp("compvis"))


@pytest.mark.parametrize("name", ["txt2img-1p4B-eval", "cin256-v2", "celebahq-ldm-vq-4", "bsr_sr"])
def test_the_papers_yamls_read_as_their_models(name: str) -> None:
    """The released configs' structure; where diffusers builds the same networks from the same
    YAML (its own reader), the parameter counts agree: LDM-KL-8-G has the paper's 1.45B."""
    from diffusers import AutoencoderKL as TheirKL
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )

    from model.autoencoder import AutoencoderKL
    from model.checkpoint import compvis_mapping as mapping
    from model.checkpoint.compvis_bert import bert_config
    from model.checkpoint.compvis_config import parse_config
    from model.ldm_bert import LDMBert
    from model.unet import UNet

    document = tiny.paper_config(name)
    config = parse_config(document, name)
    unet, schedule = mapping.unet_config(config), mapping.schedule(config)
    assert schedule.beta_schedule == "scaled_linear" and schedule.steps_offset == 1
    expected = {  # attention levels (ds 1, 2, 4, 8) and heads per level
        "txt2img-1p4B-eval": ((True, True, True, False), (8, 8, 8, 8)),
        "cin256-v2": ((False, True, True, True), (1, 1, 1, 1)),
        "celebahq-ldm-vq-4": ((False, True, True, True), (7, 14, 21, 28)),
        "bsr_sr": ((False, False, False, True), (5, 10, 10, 20)),
    }[name]
    assert (unet.attention_levels, unet.num_heads) == expected
    keys = {"txt2img-1p4B-eval": "crossattn", "cin256-v2": "crossattn", "bsr_sr": "concat"}
    assert config.conditioning_key == keys.get(name)
    if name == "cin256-v2":
        assert mapping.class_embedder_config(config).null_class == 1000
    if config.conditioning_key != "crossattn":
        return

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        ours = count(UNet(unet))
        their_config = sfu.create_unet_diffusers_config_from_ldm(document, {})
        assert ours == count(UNet2DConditionModel(**their_config))
        if name == "txt2img-1p4B-eval":
            bert = count(LDMBert(bert_config(config.cond_stage)))
            assert bert == count(LDMBertModel(LDMBertConfig()))  # diffusers' (the hub's) sizes
            assert round((ours + bert) / 1e9, 2) == 1.45  # Tab. 2's LDM-KL-8-G (+ the VAE)
            vae = sfu.create_vae_diffusers_config_from_ldm(document, {})
            assert count(TheirKL(**vae)) == count(AutoencoderKL(mapping.autoencoder_config(config)))


def write_variant(tmp_path: Path, document: dict, keys: tuple[str, ...], value: object) -> Path:
    """A copy of `document` with the entry at `keys` set to `value`, as a YAML file."""
    changed = copy.deepcopy(document)
    node = changed
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    path = tmp_path / f"variant-{len(list(tmp_path.glob('variant-*')))}.yaml"
    path.write_text(yaml.safe_dump(changed))
    return path


def test_targets_are_looked_up_never_imported(
    models: Callable[[str], Converted], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = models("uncond")
    document, marker = read_yaml(m.ckpt), tmp_path / "ran"
    unet, first = (
        ("model", "params", "unet_config", "params"),
        ("model", "params", "first_stage_config", "params"),
    )
    cases = [
        (("model", "params", "cond_stage_config"), {"target": "os.system", "params": {"x": 1}},
         r"cond_stage_config\.target: 'os\.system' is not allowed.*BERTEmbedder"),
        (("model", "target"), "builtins.eval", r"model\.target: 'builtins\.eval'"),
        ((*first, "lossconfig", "target"), "ldm.modules.losses.LPIPSWithDiscriminator",
         r"lossconfig\.target: 'ldm\.modules\.losses\.LPIPSWithDiscriminator'"),
        ((*unet, "evil"), 1, r"unet_config\.params: unknown parameters \['evil'\]"),
        ((*unet, "use_scale_shift_norm"), True, "use_scale_shift_norm: True is not supported"),
    ]  # fmt: skip
    for keys, value, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_pipeline(m.ckpt, config_dir=write_variant(tmp_path, document, keys, value))
    tagged = tmp_path / "tagged.yaml"  # safe_load builds no Python objects
    tagged.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(CheckpointError, match="not readable YAML"):
        load_pipeline(m.ckpt, config_dir=tagged)
    assert main(["convert", str(m.ckpt), str(tmp_path / "out"), "--config", str(tagged)]) == 2
    assert "not readable YAML" in capsys.readouterr().err and not marker.exists()


def test_a_pickle_that_builds_objects_is_refused(
    models: Callable[[str], Converted], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    m = models("uncond")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state_dict(m.ckpt), "callback": Payload()}, evil)
    shutil.copy(m.ckpt.with_suffix(".yaml"), evil.with_suffix(".yaml"))
    with pytest.raises(CheckpointError, match="refused: not a plain-weights checkpoint"):
        load_pipeline(evil)
    assert not marker.exists()


def test_missing_yaml_and_tokenizer_are_named(
    models: Callable[[str], Converted], tmp_path: Path
) -> None:
    text, plain = models("text2img"), models("uncond")
    for ckpt in (text.ckpt, plain.ckpt):  # no YAML anywhere: the single-file route says why
        lone = tmp_path / ckpt.stem / "model.ckpt"
        lone.parent.mkdir()
        shutil.copy(ckpt, lone)
        with pytest.raises(CheckpointError, match=r"YAML.*--config FILE\.yaml.*model\.yaml"):
            load_pipeline(lone)
    moved = tmp_path / "moved" / "ldm.ckpt"  # with its YAML, without tokenizer/
    moved.parent.mkdir()
    shutil.copy(text.ckpt, moved)
    shutil.copy(text.ckpt.with_suffix(".yaml"), moved.with_suffix(".yaml"))
    with pytest.raises(CheckpointError, match=r"tokenizer.*vocab\.txt or tokenizer\.json"):
        load_pipeline(moved)
    for given in ({"config_dir": text.folder}, {"tokenizer_dir": text.ckpt.parent / "tokenizer"}):
        assert load_pipeline(moved, **given).tasks == ("txt2img", "img2img", "inpaint")


def test_what_compvis_cannot_build_is_refused(tmp_path: Path) -> None:
    """GroupNorm(8) and LDMBert's 2 x 8 heads: CompVis' code fixes 32 groups and 8 x 64 heads."""
    from testkit.tiny_paper_models import build_tiny_ldm_text2img, build_tiny_ldm_uncond

    uncond_folder = build_tiny_ldm_uncond(tmp_path / "uncond")
    with pytest.raises(CheckpointError, match="norm_groups is 8"):
        save_compvis(load_ldm_folder(uncond_folder), tmp_path / "u.ckpt", tmp_path / "u.yaml")
    text = load_ldm_folder(build_tiny_ldm_text2img(tmp_path / "text"))
    with pytest.raises(CheckpointError, match="BERTEmbedder can only build"):
        save_compvis(text, tmp_path / "t.ckpt", tmp_path / "t.yaml")
    assert not (tmp_path / "u.ckpt").exists() and not (tmp_path / "t.ckpt").exists()


def test_training_buffers_and_stable_diffusion_yamls(
    models: Callable[[str], Converted], tmp_path: Path
) -> None:
    """A trained .ckpt's schedule buffer is checked against the YAML; scale_by_std's measured
    scale_factor wins; Stable Diffusion YAMLs (CLIP encoders) stay single_file.py's."""
    from model.checkpoint import compvis_mapping as mapping
    from model.checkpoint.compvis_config import read_config
    from model.sampling.schedule import alphas_cumprod

    m = models("uncond")
    config = read_config(m.ckpt.with_suffix(".yaml"))
    trained_alphas = alphas_cumprod(mapping.schedule(config))
    sd = state_dict(m.ckpt) | {"scale_factor": torch.tensor(0.25), "alphas_cumprod": trained_alphas,
                               "model_ema.decay": torch.tensor(0.9999)}  # fmt: skip
    trained = tmp_path / "trained.ckpt"
    torch.save({"state_dict": sd}, trained)
    shutil.copy(m.ckpt.with_suffix(".yaml"), trained.with_suffix(".yaml"))
    assert load_pipeline(trained).latent_scale == 0.25
    sd["alphas_cumprod"] = sd["alphas_cumprod"] ** 2
    torch.save({"state_dict": sd}, trained)
    with pytest.raises(CheckpointError, match="alphas_cumprod differ"):
        load_pipeline(trained)
    (tmp_path / "sd15.ckpt").write_bytes(b"")
    document = {"model": {"params": {"cond_stage_config": {
        "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}}}}  # fmt: skip
    (tmp_path / "sd15.yaml").write_text(yaml.safe_dump(document))
    assert find_compvis(tmp_path / "sd15.ckpt") is None
