"""Checkpoint formats: exact SD sizes, round trips in both formats, clear errors on bad files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.autoencoder import SD_VAE, AutoencoderKL
from model.checkpoint.diffusers_folder import load_diffusers, save_diffusers
from model.checkpoint.files import CheckpointError
from model.checkpoint.single_file import SD1_TEXT_CONFIG, load_single_file
from model.engine import BatchEngine
from model.pipeline import load_pipeline
from model.txt2img import txt2img
from model.unet import SD2_UNET, SD15_UNET, UNet
from testkit.tiny_models import build_tiny_sd
from tests.conftest import REPO


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_presets_have_the_exact_stable_diffusion_sizes() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        assert count(UNet(SD15_UNET)) == 859_520_964
        assert count(UNet(SD2_UNET)) == 865_910_724
        assert count(AutoencoderKL(SD_VAE)) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig(**SD1_TEXT_CONFIG))) == 123_060_480


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("ckpt") / "sd")


def images(pipe, seed: int = 3) -> np.ndarray:  # noqa: ANN001
    out = txt2img(BatchEngine(pipe), ["a cat"], ["a dog"], [seed], 32, 32, 4, 7.5, "euler")
    return np.asarray(out[0]).astype(np.int16)


def test_diffusers_folder_round_trip_is_exact(tiny: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    c = load_diffusers(tiny)
    save_diffusers(tmp_path / "copy", unet=c.unet, vae=c.vae, text_encoder=c.text_encoder,
                   tokenizer=c.tokenizer, schedule=c.schedule, dtype=torch.float32)  # fmt: skip
    ref = UNet2DConditionModel.from_pretrained(tmp_path / "copy" / "unet")
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([321.0]), torch.randn(1, 77, 32)
    with torch.no_grad():
        ours, theirs = c.unet(x, t, ctx), ref(x, t, encoder_hidden_states=ctx).sample
        assert torch.allclose(ours, theirs, atol=1e-5) and theirs.abs().mean() > 0.05
    assert np.array_equal(images(load_pipeline(tiny)), images(load_pipeline(tmp_path / "copy")))


def test_loaded_weights_are_owned_and_aligned(tiny: Path) -> None:
    """Weights left as views into the safetensors mapping start wherever the file's header ends;
    on an AMD EPYC the UNet then gave another image for the same bytes re-saved (1 pixel by 1)."""
    c = load_diffusers(tiny)
    for network in (c.unet, c.vae):
        tensors = [*network.parameters(), *network.buffers()]
        assert tensors and all(t.data_ptr() % 64 == 0 for t in tensors)


def unet_config(folder: Path, **changes: object) -> None:
    path = folder / "unet" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("family", "why"),
    [
        ("sdxl", "StableDiffusionXLPipeline: a UNet with addition_embed_type 'text_time' (SDXL's"),
        ("dit", "StableDiffusion3Pipeline has a transformer/ (a DiT): ldm-serve runs UNet latent"),
        ("depth", "unet: per-block transformer depth or cross_attention_dim is not supported"),
    ],
)
def test_other_model_families_are_refused_naming_why(
    tiny: Path, tmp_path: Path, family: str, why: str
) -> None:
    """They met a transformers error about a repo id, or a ValueError past the CheckpointError
    every caller catches (a traceback from generate, a worker's crash)."""
    folder = tmp_path / family
    shutil.copytree(tiny, folder)
    index = json.loads((folder / "model_index.json").read_text())
    if family == "sdxl":
        index["_class_name"] = "StableDiffusionXLPipeline"
        unet_config(folder, addition_embed_type="text_time", transformer_layers_per_block=[1, 2])
    elif family == "dit":
        index["_class_name"] = "StableDiffusion3Pipeline"
        (folder / "unet").rename(folder / "transformer")
    else:
        unet_config(folder, transformer_layers_per_block=[1, 2])
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as refused:
        load_pipeline(folder)
    assert str(refused.value).startswith(why)


def test_an_sdxl_single_file_is_refused_naming_it(tmp_path: Path) -> None:
    """It was told to bring the YAML it was trained with, as a paper model's .ckpt is."""
    path = tmp_path / "sd_xl_base.safetensors"
    clip = "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias"
    save_file({clip: torch.zeros(2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "first_stage_model.decoder.conv_out.bias": torch.zeros(3)}, str(path))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"^sd_xl_base.safetensors is an SDXL checkpoint"):
        load_pipeline(path)


def convert(*args: str) -> str:
    """`ldm-serve convert` in a subprocess; its stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "cli.main", "convert", *args], cwd=REPO, env=env,
                          check=True, capture_output=True, text=True).stderr  # fmt: skip


@pytest.mark.slow  # the fast tier stays under 3 minutes; the full suite runs it
def test_single_file_from_convert_matches_diffusers_from_single_file(
    tiny: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    single = tmp_path / "tiny.safetensors"
    convert(str(tiny), str(single), "--dtype", "float32")
    keys = load_file(str(single))
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    reference = StableDiffusionPipeline.from_single_file(
        str(single), config=str(tiny), local_files_only=True
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(
        "a cat",
        negative_prompt="a dog",
        generator=[torch.Generator().manual_seed(3)],
        num_inference_steps=6,
        guidance_scale=7.5,
        height=32,
        width=32,
        output_type="np",
    ).images[0]
    ours = txt2img(
        BatchEngine(load_pipeline(single)), ["a cat"], ["a dog"], [3], 32, 32, 6, 7.5, "ddim"
    )[0]
    diff = np.abs(np.asarray(ours).astype(np.int16) - (theirs * 255).round().astype(np.int16))
    assert diff.mean() <= 0.5 and diff.max() <= 4, (diff.mean(), diff.max())
    back = tmp_path / "back"
    assert "Writing model shards" not in convert(str(single), str(back), "--dtype", "float32")
    assert np.array_equal(images(load_pipeline(back)), images(load_pipeline(tiny)))


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_single_file_without_metadata_needs_a_config_folder(tiny: Path, tmp_path: Path) -> None:
    single = tmp_path / "plain.safetensors"
    convert(str(tiny), str(tmp_path / "meta.safetensors"), "--dtype", "float32")
    save_file(load_file(str(tmp_path / "meta.safetensors")), str(single))  # drops metadata
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_single_file(single)
    pipe = load_pipeline(single, config_dir=tiny)
    assert np.array_equal(images(pipe), images(load_pipeline(tiny)))


def test_wrong_shapes_name_the_key(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(tiny), str(bad)], check=True)
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors["conv_in.weight"] = torch.zeros(32, 4, 5, 5)
    del tensors["conv_out.bias"]
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError) as error:
        load_pipeline(bad)
    assert "conv_out.bias" in str(error.value)
    tensors["conv_out.bias"] = torch.zeros(4)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"input_blocks\.0\.0\.weight.*\(32, 4, 5, 5\)"):
        load_pipeline(bad)


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_missing_and_truncated_files_are_clear(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(CheckpointError, match="not a diffusers folder or a checkpoint"):
        load_pipeline(tmp_path / "nowhere")
    single = tmp_path / "t.safetensors"
    convert(str(tiny), str(single))
    data = single.read_bytes()
    single.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_pipeline(single)
    (tmp_path / "x.bin2").write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_pipeline(tmp_path / "x.bin2")


class Exploit:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {Exploit.marker}",))

    marker = ""


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    Exploit.marker = str(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Exploit()}, str(evil))
    with pytest.raises(CheckpointError, match="refused"):
        load_pipeline(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("junk", "why"),
    [
        (b"junk\n", "(KeyError: 174812789)"),  # the unpickler raised KeyError past the old except
        (b"not a pickle", "(Unsupported operand 110)"),  # torch's page of text, cut to its reason
        (b"", "(EOFError)"),  # an empty file: torch says nothing more
    ],
)
def test_junk_ckpt_bytes_are_refused_in_one_line(tmp_path: Path, junk: bytes, why: str) -> None:
    path = tmp_path / "junk.ckpt"
    path.write_bytes(junk)
    with pytest.raises(CheckpointError) as refused:
        load_pipeline(path)
    assert str(refused.value) == f"junk.ckpt was refused: not a plain-weights checkpoint {why}"


@pytest.mark.slow  # the fast tier stays under 3 minutes; the full suite runs it
def test_plain_ckpt_loads_through_weights_only(tiny: Path, tmp_path: Path) -> None:
    single = tmp_path / "m.safetensors"
    convert(str(tiny), str(single), "--dtype", "float32")
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": load_file(str(single)), "global_step": 1}, str(ckpt))
    assert np.array_equal(images(load_pipeline(ckpt, config_dir=tiny)), images(load_pipeline(tiny)))


def test_sd2_open_clip_weights_convert_to_the_penultimate_layer() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    from model.checkpoint.open_clip import convert_open_clip, sd2_text_config

    torch.manual_seed(0)
    full = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                        num_attention_heads=1, vocab_size=50, hidden_act="gelu",
                                        max_position_embeddings=77)).eval()  # fmt: skip
    sd = {k.removeprefix("text_model."): v for k, v in full.state_dict().items()}
    open_clip = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
                 "positional_embedding": sd["embeddings.position_embedding.weight"],
                 "ln_final.weight": sd["final_layer_norm.weight"],
                 "ln_final.bias": sd["final_layer_norm.bias"]}  # fmt: skip
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}  # fmt: skip
    for i in range(3):
        layer = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{layer}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            open_clip[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv)
            for old, new in names.items():
                open_clip[f"transformer.resblocks.{i}.{old}.{kind}"] = sd[f"{layer}{new}.{kind}"]
    converted = convert_open_clip(open_clip)
    config = sd2_text_config(converted)
    assert config.num_hidden_layers == 2
    model = CLIPTextModel(config).eval()
    flat = {k.removeprefix("text_model."): v for k, v in converted.items()}
    model.load_state_dict(flat if "embeddings.token_embedding.weight" in model.state_dict()
                          else converted, strict=True)  # fmt: skip
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        hidden = full(ids, output_hidden_states=True).hidden_states[-2]
        expected = full.final_layer_norm(hidden)
        assert torch.allclose(model(ids).last_hidden_state, expected, atol=1e-5)


def test_model_index_declares_a_stable_diffusion_pipeline(tiny: Path, tmp_path: Path) -> None:
    c = load_diffusers(tiny)
    save_diffusers(tmp_path / "m", unet=c.unet, vae=c.vae, text_encoder=c.text_encoder,
                   tokenizer=c.tokenizer, schedule=c.schedule)  # fmt: skip
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert (
        load_file(str(tmp_path / "m/unet/diffusion_pytorch_model.safetensors"))[
            "conv_in.weight"
        ].dtype
        == torch.float16
    )
