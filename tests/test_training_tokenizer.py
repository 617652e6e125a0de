"""The dataset tokenizer: CLIP BPE files that transformers loads, whole words, exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CLIPTextModel, CLIPTokenizer

from model.conditioning import TextConditioner
from training.ldm_trainer import text_encoder_for, token_ids
from training.shapes import eval_samples, make_samples, vocabulary_corpus
from training.tokenizer_builder import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(vocabulary_corpus(), folder)
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return CLIPTokenizer.from_pretrained(folder)  # from vocab.json + merges.txt alone


def _normalise(text: str) -> str:
    return " ".join(text.replace(",", " , ").split())


def test_captions_round_trip(tokenizer: CLIPTokenizer) -> None:
    for sample in make_samples(500, seed=3) + eval_samples():
        ids = tokenizer(sample.caption).input_ids
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert _normalise(decoded) == _normalise(sample.caption)


def test_dataset_words_are_single_tokens(tokenizer: CLIPTokenizer) -> None:
    for word in vocabulary_corpus():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer) < 700


def test_unknown_text_still_round_trips(tokenizer: CLIPTokenizer) -> None:
    text = "a zebra-striped hexagon 42"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_save_and_reload(tokenizer: CLIPTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    caption = "a large red circle on the left, on a white background"
    assert again(caption).input_ids == tokenizer(caption).input_ids


def test_training_ids_match_the_inference_conditioner(tokenizer: CLIPTokenizer) -> None:
    encoder: CLIPTextModel = text_encoder_for(tokenizer)
    conditioner = TextConditioner(tokenizer, encoder)
    for text in ("", "a blue square", eval_samples()[250].caption):
        assert token_ids(tokenizer, [text])[0].tolist() == conditioner.chunks(text)[0]
