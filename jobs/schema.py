"""The txt2img request, its resolved form and the job record: the API<->worker contract."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobs.webhooks import Webhook

# Seeds are 32-bit like A1111's; image i of a request uses seed + i.
MAX_SEED = 2**32 - 1
# The prompt validator's rules as OpenAPI `pattern`s (Python `re`'s whitespace is `str.strip`'s):
# text holds no NUL (PNG text chunks cannot), and a prompt is not blank.
TEXT_PATTERN = r"^[^\x00]*$"
PROMPT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


class Sampler(StrEnum):
    """Samplers every worker implements: the keys of model/sampling/registry.py (a test checks)."""

    ddim = "ddim"
    plms = "plms"
    euler = "euler"
    euler_a = "euler_a"
    heun = "heun"
    dpmpp_2m = "dpmpp_2m"


class Task(StrEnum):
    """What a job asks of the model (LDM Sec. 3.3 and 4: text-, image- and mask-conditioned)."""

    txt2img = "txt2img"
    img2img = "img2img"  # SDEdit: start part-way down the schedule from a noised init image
    inpaint = "inpaint"  # repaint the mask's white (or transparent) area of the init image
    upscale = "upscale"  # super-resolution x4: the low-res image concatenated to the latent
    sample = "sample"  # no text: unconditional, or a class label's images (LDM Sec. 4.1, 4.2)


class OutputFormat(StrEnum):
    """Image encodings a job can ask for."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def media_type(self) -> str:
        """HTTP content type of this encoding."""
        return f"image/{self.value}"


class JobStatus(StrEnum):
    """Lifecycle of a job record (`ldm:job:<id>` field `status`)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change."""
        return self not in (JobStatus.queued, JobStatus.running)


@dataclass(frozen=True)
class Limits:
    """Bounds on generation parameters (the API's settings pass their own)."""

    max_prompt_chars: int = 2000
    min_size: int = 64
    max_size: int = 2048
    max_pixels: int = 1024 * 1024
    max_steps: int = 150
    max_images: int = 4
    max_guidance_scale: float = 30.0
    default_size: int = 512
    default_guidance: float = 7.5
    # Work one request may ask for, in pixel-steps (width x height x steps x images): 1024^2 at
    # 50 steps, or four 512^2 images at 50 (at most ~8 s per step of a 1024^2 image on 2 cores).
    max_cost: int = 1024 * 1024 * 50


DEFAULT_LIMITS = Limits()


def _size_field(limits: Limits) -> Any:
    """Width/height: multiple of 8 within bounds; defaults are validated too (max_pixels)."""
    return Field(
        min(limits.default_size, limits.max_size),
        ge=limits.min_size,
        le=limits.max_size,
        multiple_of=8,
        validate_default=True,
        description=f"multiple of 8; width x height <= {limits.max_pixels} pixels",
    )


def _text_field(limits: Limits, pattern: str, **bounds: Any) -> Any:
    """A prompt-like string; its validator's rule (`_text`) is also its schema `pattern`."""
    return Field(
        max_length=limits.max_prompt_chars,
        strict=True,
        json_schema_extra={"pattern": pattern},
        **bounds,
    )


def _bounded_fields(limits: Limits) -> dict[str, Any]:
    """Field(...) for every bounded request parameter, taken from `limits`.

    JSON types count as JSON Schema counts them: `true` and `"5"` are no numbers, 7 is a float,
    5.0 an integer (`_json_integer`). Strict per field: enums arrive as JSON strings.
    """
    return {
        "prompt": _text_field(limits, PROMPT_PATTERN, min_length=1),
        "negative_prompt": _text_field(limits, TEXT_PATTERN, default=""),
        "width": _size_field(limits),
        "height": _size_field(limits),
        "steps": Field(min(25, limits.max_steps), ge=1, le=limits.max_steps),
        "guidance_scale": Field(
            limits.default_guidance,
            ge=0.0,
            le=limits.max_guidance_scale,
            strict=True,
            validate_default=True,
        ),
        "num_images": Field(1, ge=1, le=limits.max_images),
    }


_DEFAULT_FIELDS = _bounded_fields(DEFAULT_LIMITS)


class Txt2ImgRequest(BaseModel):
    """Body of POST /v1/txt2img; use `request_model(limits)` for configured bounds."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    limits: ClassVar[Limits] = DEFAULT_LIMITS
    task: ClassVar[Task] = Task.txt2img
    prompt_may_be_empty: ClassVar[bool] = False
    reads_text: ClassVar[bool] = True
    default_guidance: ClassVar[float | None] = None  # None: the limits' (LDM_DEFAULT_GUIDANCE)

    prompt: str = _DEFAULT_FIELDS["prompt"]
    negative_prompt: str = _DEFAULT_FIELDS["negative_prompt"]
    width: int = _DEFAULT_FIELDS["width"]
    height: int = _DEFAULT_FIELDS["height"]
    steps: int = _DEFAULT_FIELDS["steps"]
    guidance_scale: float = _DEFAULT_FIELDS["guidance_scale"]
    sampler: Sampler = Sampler.ddim
    eta: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        strict=True,
        description="fresh-noise scale of samplers that draw noise (ddim: DDIM eta, default 0; "
        "euler_a: ancestral eta, default 1, 0 = plain Euler); null = the sampler's default",
    )
    karras: bool = Field(
        False, strict=True, description="Karras sigma schedule (k-diffusion samplers)"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random when absent")
    num_images: int = _DEFAULT_FIELDS["num_images"]
    output_format: OutputFormat = OutputFormat.png
    model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="default model when absent"
    )
    webhook: Webhook | None = Field(
        None, description="POST signed events about this job here (docs/api.md, Webhooks)"
    )

    @field_validator("width", "height", "steps", "num_images", "seed", mode="before")
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        """No bools or strings; integral numbers (5.0) pass on to int's own check."""
        if isinstance(value, bool | str):
            raise PydanticCustomError("int_type", "Input should be a valid integer")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if info.field_name == "prompt" and not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("height")
    @classmethod
    def _max_pixels(cls, height: int | None, info: ValidationInfo) -> int | None:
        width = info.data.get("width")
        if width is not None and height is not None and width * height > cls.limits.max_pixels:
            raise ValueError(
                f"width x height = {width * height} pixels exceeds the maximum of "
                f"{cls.limits.max_pixels}"
            )
        return height

    @model_validator(mode="after")
    def _max_cost(self) -> Txt2ImgRequest:
        if self.width is None or self.height is None:  # image tasks: checked once sized
            return self
        cost = self.width * self.height * self.steps * self.num_images
        if cost > self.limits.max_cost:
            raise ValueError(
                f"width x height x steps x num_images = {cost} pixel-steps exceeds the cost cap "
                f"LDM_MAX_COST = {self.limits.max_cost}"
            )
        return self

    def resolve(
        self, default_model: str, seed: int | None = None, **resolved: Any
    ) -> ResolvedRequest:
        """The request with model and seed filled in (random seed when none was given), and
        `resolved` values (an image task's task, size and strength) over the request's own."""
        data = {**self.model_dump(exclude=IMAGE_FIELDS | {"webhook"}), **resolved}
        data["model"] = self.model or default_model
        if data["seed"] is None:
            data["seed"] = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
        return ResolvedRequest.model_validate(data)


def request_model(
    limits: Limits, models: Sequence[str] = (), base: type[Txt2ImgRequest] | None = None
) -> type[Txt2ImgRequest]:
    """A subclass of `base` (Txt2ImgRequest) whose Field bounds (and OpenAPI schema) come from
    `limits`; with `models`, `model` must name one of them (an enum in the schema)."""
    base = base or Txt2ImgRequest
    bounded = _bounded_fields(limits)
    if base.prompt_may_be_empty:  # OpenAI's variations: the base's own prompt field
        del bounded["prompt"]
    if not base.reads_text:  # sampling: the base's own (empty) text fields
        del bounded["negative_prompt"]
    if base.default_guidance is not None:  # sampling: the paper's own scale, not SD's
        bounded["guidance_scale"] = Field(base.default_guidance, ge=0.0, strict=True,
                                          le=limits.max_guidance_scale)  # fmt: skip
    if base is not Txt2ImgRequest:  # other tasks: the size is the input's (or model's) if absent
        for name in ("width", "height"):
            bounded[name] = optional_size_field(limits)
    fields: dict[str, Any] = {
        name: (base.model_fields[name].annotation, info) for name, info in bounded.items()
    }
    if models:
        served = cast(Any, Literal)[tuple(models)]
        fields["model"] = (served | None, Field(None, description="default model when absent"))
    model = create_model(base.__name__, __base__=base, **fields)
    model.limits = limits
    return model


def optional_size_field(limits: Limits) -> Any:
    """Width/height of an image task: absent = the init image's, rounded down to 8."""
    return Field(
        None,
        ge=limits.min_size,
        le=limits.max_size,
        multiple_of=8,
        description="multiple of 8; absent: the init image's (rounded down to a multiple of 8)",
    )


# The image tasks' uploads (jobs/image_requests.py): never in the record, stored beside it.
IMAGE_FIELDS = {"init_image", "mask_image", "image"}
UPSCALE_FACTOR = 4  # the upscale task's output side / input side (the x4 upscaler layout)
MAX_NOISE_LEVEL = 350  # the x4 upscaler's max_noise_level


class ResolvedRequest(BaseModel):
    """A validated request with every value concrete; what workers read from the record."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: Sampler
    eta: float | None = None  # None: the sampler's default
    karras: bool = False
    seed: int
    num_images: int = 1
    output_format: OutputFormat = OutputFormat.png
    model: str
    task: Task = Task.txt2img
    strength: float = 1.0  # img2img/inpaint: the share of the schedule run from the init image
    keep_unmasked: bool = False  # inpaint: the init image's pixels outside the mask, exactly
    noise_level: int = 20  # upscale: the low-res image's augmentation step (0-350)
    class_label: int | None = None  # sample: the class of a class-conditional model

    @property
    def cost(self) -> int:
        """Work in pixel-steps: width x height x steps x images (what LDM_MAX_COST bounds)."""
        return self.width * self.height * self.steps * self.num_images
