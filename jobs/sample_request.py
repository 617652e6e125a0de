"""Body of POST /v1/sample: images of a model without text, the paper's unconditional LDMs
(CelebA-HQ, FFHQ, LSUN; Sec. 4.1) and its class-conditional ImageNet LDM (Sec. 4.2). A class is
an index or a class name; names resolve at the edge against the ones the model's workers publish
(jobs/model_profile.py), with near matches in the 422 when none is exact."""

from __future__ import annotations

import difflib
from typing import Annotated, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from jobs.schema import DEFAULT_LIMITS, Task, Txt2ImgRequest, optional_size_field

NEAR_MATCHES = 5  # class names offered when a name matches none
# A class: an index (a JSON integer: no bool, no 3.5) or a name with something besides spaces.
ClassIndex = Annotated[int, Field(ge=0, strict=True)]
ClassName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S", strict=True)]


class SampleRequest(Txt2ImgRequest):
    """Unconditional or class-conditional sampling: no prompt; `class_label` for class models."""

    class_label: ClassIndex | ClassName | None = Field(
        None,
        description="class-conditional models: the class, as an index (0-999 for ImageNet) or "
        "a class name ('goldfish', 'golden retriever'); leave out for unconditional models",
    )
    prompt: str = Field("", description="must be empty: these models read no text",
                        json_schema_extra={"maxLength": 0})  # fmt: skip
    negative_prompt: str = Field("", description="must be empty: these models read no text",
                                 json_schema_extra={"maxLength": 0})  # fmt: skip
    width: int | None = optional_size_field(DEFAULT_LIMITS)  # type: ignore[assignment]
    height: int | None = optional_size_field(DEFAULT_LIMITS)  # type: ignore[assignment]
    task: ClassVar[Task] = Task.sample
    prompt_may_be_empty: ClassVar[bool] = True
    reads_text: ClassVar[bool] = False
    # The paper's cin-LDM-4 scale with the best FID (Tab. 3, 1.5); guidance applies only where
    # the model has a null class (cin256-v2), else it is ignored.
    default_guidance: ClassVar[float | None] = 1.5

    @field_validator("class_label", mode="before")
    @classmethod
    def _label(cls, value: object) -> object:
        """One clear message for what the schema's two forms refuse (not a union's two); an
        integral number is an integer, as JSON Schema counts (5.0)."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | str | None):
            raise ValueError("must be a class index (an integer) or a class name")
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0")
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        if value:
            raise ValueError("this route samples without text: leave it out (text-to-image "
                             "models take prompts at /v1/txt2img)")  # fmt: skip
        return value


def class_index(label: int | str, names: tuple[str, ...]) -> int:
    """The index of a class given by index or name (any of a class's comma-separated names, case
    and spacing ignored); ValueError saying what exists when nothing or several classes match."""
    if isinstance(label, int):
        if label >= len(names):
            raise ValueError(f"{label} is outside 0..{len(names) - 1}")
        return label
    wanted = _normal(label)
    synonyms = {i: [_normal(n) for n in name.split(",")] for i, name in enumerate(names)}
    exact = [i for i, words in synonyms.items() if wanted in words or wanted == _normal(names[i])]
    if len(exact) == 1:
        return exact[0]
    if exact:
        listed = "; ".join(f"{i}: {names[i]!r}" for i in exact)
        raise ValueError(f"{label!r} names {len(exact)} classes ({listed}): give the index")
    every = {word: i for i, words in synonyms.items() for word in words}
    near = difflib.get_close_matches(wanted, list(every), n=NEAR_MATCHES, cutoff=0.6)
    offered = ", ".join(f"{word!r} ({every[word]})" for word in near)
    hint = f"near matches: {offered}" if near else f"give an index 0..{len(names) - 1}"
    raise ValueError(f"no class is named {label!r}; {hint}")


def _normal(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())
