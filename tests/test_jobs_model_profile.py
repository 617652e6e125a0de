"""Submission advice (jobs/model_profile.py) as pure functions, the words a tokenizer knows
(model/vocabulary.py), and the profile's round trip through Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from jobs.model_profile import ModelProfile, publish_profile, read_profile, words
from jobs.schema import Task
from model.vocabulary import OPEN_VOCABULARY, known_words
from tests.conftest import REPO

SHAPES = ModelProfile(64, frozenset({"a", "red", "circle", "on", "the", "left"}))


def test_words_are_the_tokenizers_runs_of_letters() -> None:
    assert words("A red circle, on the LEFT; 3 red-ish circles!") == [
        "a", "red", "circle", "on", "the", "left", "ish", "circles",
    ]  # fmt: skip


def test_unknown_words_are_named_once_per_field_in_prompt_order() -> None:
    (prompt, negative) = SHAPES.advise("a cat, a red dog and a cat", "blurry", 64, 64)
    assert prompt.type == negative.type == "unknown-words"
    assert prompt.message.startswith("prompt: the model's vocabulary has no 'cat', 'dog', 'and';")
    assert negative.message.startswith("negative_prompt: the model's vocabulary has no 'blurry';")
    assert SHAPES.advise("A RED circle on the left", "", 64, 64) == []
    (long,) = SHAPES.advise("a " + "x" * 2000 + " red", "", 64, 64)  # found from outside:
    assert "'" + "x" * 23 + "\u2026'" in long.message and len(long.message) < 200  # echoed whole


@pytest.mark.parametrize(
    ("width", "height", "far"),
    [(64, 64, False), (120, 96, False), (40, 40, False), (128, 64, True), (64, 32, True),
     (512, 512, True)],
)  # fmt: skip
def test_a_side_twice_or_half_the_native_one_is_far(width: int, height: int, far: bool) -> None:
    advice = ModelProfile(native_size=64).advise("a cat", "", width, height)
    assert [w.type for w in advice] == (["size"] if far else [])  # open vocabulary: no words


def test_upscale_jobs_get_no_size_advice() -> None:
    assert ModelProfile(native_size=64).advise("", "", 512, 512, Task.upscale) == []


def test_the_shipped_tokenizer_knows_its_caption_words_and_clip_knows_every_word() -> None:
    from transformers import CLIPTokenizer

    shipped = CLIPTokenizer.from_pretrained(
        REPO / "models/default/tokenizer", local_files_only=True
    )
    known = known_words(shipped)
    assert known is not None and {"red", "circle", "triangle", "left", "a"} <= known
    assert "cat" not in known

    class Clip:  # only its vocabulary's size matters
        def get_vocab(self) -> dict[str, int]:
            return {f"t{i}</w>": i for i in range(OPEN_VOCABULARY)}

    assert known_words(Clip()) is None  # type: ignore[arg-type]

    class WordPiece:  # BERT's (LDM's text2img model): no end-of-word marks, so no guess
        def get_vocab(self) -> dict[str, int]:
            return {"red": 0, "##dish": 1}

    assert known_words(WordPiece()) is None  # type: ignore[arg-type]


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def test_the_profile_round_trips_and_a_new_one_replaces_it(client: redis.Redis) -> None:
    assert read_profile(client, "default") == ModelProfile()  # no worker yet: no advice
    publish_profile(client, "default", SHAPES)
    assert read_profile(client, "default") == SHAPES
    publish_profile(client, "default", ModelProfile(512))  # an SD model under the same name
    assert read_profile(client, "default") == ModelProfile(512, None)
