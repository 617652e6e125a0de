"""BatchEngine and Pipeline behaviour: batch invariance, conditioning windows, progress, NaN."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from model.engine import BatchEngine, SampleSpec
from model.errors import Canceled, NonFiniteOutput
from model.pipeline import Pipeline, load_pipeline
from model.txt2img import txt2img
from testkit.tiny_models import build_tiny_sd

SAMPLERS = ["ddim", "euler", "euler_a", "dpmpp_2m", "heun", "plms"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return load_pipeline(build_tiny_sd(tmp_path_factory.mktemp("engine") / "sd"))


def mixed_specs() -> list[SampleSpec]:
    return [
        SampleSpec("a cat sat", "a dog" if i % 4 == 0 else "", 100 + i, 32, 32, 3 + i % 4,
                   [1.0, 3.0, 7.5][i % 3], SAMPLERS[i % 6], 0.3 if i % 6 == 0 else 0.0)
        for i in range(12)
    ]  # fmt: skip


def run(pipe: Pipeline, specs: list[SampleSpec]) -> list[np.ndarray]:
    engine = BatchEngine(pipe)
    handles = [engine.add(spec) for spec in specs]
    while len(engine):
        engine.step()
    return [np.asarray(image) for image in engine.decode(handles)]


def test_an_image_is_bit_identical_alone_or_in_any_batch(pipe: Pipeline) -> None:
    specs = mixed_specs()
    together = run(pipe, specs)
    assert len({image.tobytes() for image in together}) == len(specs)  # really different images
    for i, spec in enumerate(specs):
        assert np.array_equal(run(pipe, [spec])[0], together[i]), f"sample {i} ({spec.sampler})"
    assert np.array_equal(run(pipe, specs[5:9])[2], together[7])


def test_samples_join_and_leave_between_steps(pipe: Pipeline) -> None:
    first, late = mixed_specs()[1], mixed_specs()[2]
    engine = BatchEngine(pipe)
    a = engine.add(first)
    engine.step()  # `a` is one step ahead when `b` joins
    b = engine.add(late)
    finished = []
    while len(engine):
        finished += engine.step()
    assert {id(a), id(b)} == {id(h) for h in finished}
    got = engine.decode([a, b])
    assert np.array_equal(np.asarray(got[0]), run(pipe, [first])[0])
    assert np.array_equal(np.asarray(got[1]), run(pipe, [late])[0])


def test_removed_sample_stops_and_others_continue(pipe: Pipeline) -> None:
    engine = BatchEngine(pipe)
    keep, drop = engine.add(mixed_specs()[1]), engine.add(mixed_specs()[2])
    engine.step()
    engine.remove(drop)
    while len(engine):
        engine.step()
    assert keep.done and not drop.done and drop.steps_done == 1


def test_progress_is_in_steps_for_every_sampler(pipe: Pipeline) -> None:
    """A heun job makes 2S - 1 denoiser calls; its progress still counts S steps."""
    seen = []
    txt2img(BatchEngine(pipe), ["a cat"], seeds=[1], width=32, height=32, steps=4, sampler="heun",
            callback=lambda step, total: seen.append((step, total)))  # fmt: skip
    assert seen == [(0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (4, 4)]  # 7 calls
    for sampler in SAMPLERS:
        steps: list[int] = []
        txt2img(BatchEngine(pipe), ["a cat"], width=32, height=32, steps=3, sampler=sampler,
                callback=lambda step, total, steps=steps: steps.append(step))  # fmt: skip
        assert steps == sorted(steps) and steps[-1] == 3 and 3 not in steps[:-1], (sampler, steps)
    engine = BatchEngine(pipe)
    with pytest.raises(Canceled):
        txt2img(engine, ["a cat"], width=32, height=32, steps=4, callback=lambda s, t: s < 2)
    assert len(engine) == 0  # a canceled call leaves nothing behind in the engine


def test_long_prompts_are_chunked_not_truncated(pipe: Pipeline, caplog) -> None:  # noqa: ANN001
    conditioner = pipe.conditioner
    long_prompt = " ".join(["cat"] * 80)  # "c" + "at</w>": 160 tokens -> 3 windows of 75
    with caplog.at_level(logging.WARNING):
        cond, uncond = conditioner.encode_pair(long_prompt, "")
    chunks = conditioner.chunks(long_prompt)
    assert len(chunks) == 3 and all(len(c) == 77 for c in chunks)
    assert cond.shape == uncond.shape == (1, 3 * 77, 32)
    assert "chunks of 75" in caplog.text
    assert conditioner.encode(long_prompt, 3) is cond  # LRU cache hit
    exact = conditioner.encode(" ".join(["cat"] * 37 + ["a"]))  # 75 tokens: one window exactly
    assert exact.shape == (1, 77, 32)
    image = txt2img(BatchEngine(pipe), [long_prompt], width=32, height=32, steps=2)[0]
    assert image.size == (32, 32)


def test_clip_skip_uses_an_earlier_layer(pipe: Pipeline) -> None:
    from model.conditioning import TextConditioner

    skip = TextConditioner(pipe.components.tokenizer, pipe.components.text_encoder, clip_skip=2)
    ids = torch.tensor([skip.chunks("a cat")[0]])
    with torch.no_grad():
        out = pipe.components.text_encoder(ids, output_hidden_states=True)
        expected = pipe.components.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.equal(skip.encode("a cat"), expected)
    assert not torch.equal(skip.encode("a cat"), pipe.conditioner.encode("a cat"))


def test_non_finite_latents_fail_with_the_sample_index(pipe: Pipeline) -> None:
    latents = torch.zeros(3, 4, 16, 16)
    latents[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteOutput) as error:
        pipe.decode_latents(latents)
    assert error.value.indices == [1]


def test_bad_sizes_and_samplers_are_rejected(pipe: Pipeline) -> None:
    engine = BatchEngine(pipe)
    with pytest.raises(ValueError, match="multiples of 2"):
        engine.add(SampleSpec("x", width=33, height=32))
    with pytest.raises(ValueError, match="unknown sampler"):
        engine.add(SampleSpec("x", sampler="nope"))


def test_vq_decoder_snaps_latents_to_the_codebook() -> None:
    from model.autoencoder import AutoencoderConfig
    from model.vq import VQAutoencoder

    config = AutoencoderConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                               latent_channels=3, norm_groups=8)  # fmt: skip
    vq = VQAutoencoder(config, num_embeddings=5).eval()
    z = vq.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert z.shape == (2, 3, 8, 8)
    snapped = vq.quantize(z)
    codebook = vq.quantize.embedding.weight
    flat = snapped.permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.equal(row, code) for code in codebook) for row in flat)
    assert torch.equal(vq.quantize(snapped), snapped)  # idempotent
    assert vq.decode(z).shape == (2, 3, 16, 16)


def test_v_prediction_model_loads_its_schedule(tmp_path: Path) -> None:
    path = build_tiny_sd(tmp_path / "sd", "v_prediction")
    assert load_pipeline(path).components.schedule.prediction_type == "v_prediction"


@pytest.mark.parametrize("count", [1, 3, 5])
def test_decoding_in_slices_gives_the_same_images(pipe: Pipeline, count: int) -> None:
    latents = torch.randn(count, 4, 8, 8, generator=torch.Generator().manual_seed(count))
    pipe.decode_batch = 64
    whole = pipe.decode_latents(latents)
    pipe.decode_batch = 2  # the default: slices of 2 and, for odd counts, a lone tail
    try:
        sliced = pipe.decode_latents(latents)
    finally:
        pipe.decode_batch = 2
    assert sliced.shape == whole.shape and len(whole) == count
    assert np.array_equal(sliced, whole)
