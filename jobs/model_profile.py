"""What a model's workers say about it, so the API can warn about requests it would answer with
nonsense rather than an error: the size it draws best at and, for a closed-vocabulary
tokenizer (the shipped model's, learned on its caption words), the words it knows.

Each worker writes its model's profile as it starts, like its tasks; the API, which imports no
model code, reads it at submission. A model no worker has described gets no warnings.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs import keys
from jobs.record import JobWarning
from jobs.schema import ResolvedRequest, Task

if TYPE_CHECKING:  # `ldm-serve generate` advises too, and needs no redis
    from redis import Redis

# A word as CLIP's pre-tokenizer splits it (`[\p{L}]+`, after NFC and lower-casing): digits and
# punctuation are single tokens every vocabulary has, so only runs of letters can be unknown.
WORD = re.compile(r"[^\W\d_]+")
# A side at least SIZE_RATIO times the native one, or at most its 1/SIZE_RATIO, is far off:
# latent diffusion models repeat or break their subjects there (SD 1.x at 1024 px, or 256 px).
SIZE_RATIO = 2
PROFILE_TTL_S = 7 * 24 * 3600  # like the published tasks: every worker start renews it
MAX_LISTED = 8  # unknown words named in one warning
MAX_WORD_CHARS = 24  # a longer one is shown cut, with an ellipsis (the job JSON stays small)


def words(text: str) -> list[str]:
    """The words of a prompt as the tokenizer sees them, in order, without repeats."""
    found = WORD.findall(unicodedata.normalize("NFC", text).lower())
    return list(dict.fromkeys(found))


def _cut(word: str) -> str:
    return word if len(word) <= MAX_WORD_CHARS else word[: MAX_WORD_CHARS - 1] + "\u2026"


@dataclass(frozen=True)
class ModelProfile:
    """The native size (px per side; None: unknown), the known words (None: any word, as
    with CLIP's 49,408-token BPE) and a class-conditional model's class names (None: the model
    takes no class)."""

    native_size: int | None = None
    known_words: frozenset[str] | None = None
    class_names: tuple[str, ...] | None = None

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` outside the vocabulary (none for an open vocabulary)."""
        if self.known_words is None:
            return []
        return [word for word in words(text) if word not in self.known_words]

    def advise(
        self, prompt: str, negative_prompt: str, width: int, height: int, task: Task = Task.txt2img
    ) -> list[JobWarning]:
        """Warnings for one request: unknown words per prompt field, a size far from native."""
        found = []
        for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            unknown = self.unknown_words(text)
            if unknown:
                listed = ", ".join(repr(_cut(word)) for word in unknown[:MAX_LISTED])
                more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
                message = (
                    f"{field}: the model's vocabulary has no {listed}{more}; it was trained on "
                    "a small closed vocabulary and will ignore or misread these words"
                )
                found.append(JobWarning(type="unknown-words", message=message))
        native = self.native_size
        if native and task is not Task.upscale and self._far(native, width, height):
            message = (
                f"{width}x{height} is far from the model's native {native}x{native}: expect "
                f"repeated, broken or empty pictures; it draws best near {native}x{native}"
            )
            found.append(JobWarning(type="size", message=message))
        return found

    def warnings(self, request: ResolvedRequest) -> list[JobWarning]:
        """`advise` for a resolved request (an upscale job's size is its input's x4: no advice)."""
        return self.advise(
            request.prompt, request.negative_prompt, request.width, request.height, request.task
        )

    @staticmethod
    def _far(native: int, width: int, height: int) -> bool:
        return (
            max(width, height) >= SIZE_RATIO * native or min(width, height) * SIZE_RATIO <= native
        )


def publish_profile(redis: Redis, model: str, profile: ModelProfile) -> None:
    """Replace the model's published profile (a worker's, as it starts)."""
    fields: dict[str, str] = {}
    if profile.native_size:
        fields["native_size"] = str(profile.native_size)
    if profile.known_words is not None:
        fields["known_words"] = " ".join(sorted(profile.known_words))
    if profile.class_names is not None:
        fields["class_names"] = json.dumps(list(profile.class_names))
    key = keys.model_profile(model)
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's loose stub
            pipe.expire(key, PROFILE_TTL_S)
        pipe.execute()


def read_profile(redis: Redis, model: str) -> ModelProfile:
    """The model's published profile (empty, so no advice, when no worker has written one)."""
    raw: dict[Any, Any] = redis.hgetall(keys.model_profile(model))
    fields = {_text(name): _text(value) for name, value in raw.items()}
    size = fields.get("native_size")
    known = fields.get("known_words")
    classes = fields.get("class_names")
    return ModelProfile(
        native_size=int(size) if size else None,
        known_words=frozenset(known.split()) if known is not None else None,
        class_names=tuple(json.loads(classes)) if classes is not None else None,
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
