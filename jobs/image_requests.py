"""Requests of the image-conditioned tasks (img2img, inpainting, OpenAI's variations, x4
upscaling): the txt2img request plus uploads and strength or noise level; the size is the init
image's (x4 the image's for upscaling) unless given."""

from __future__ import annotations

from math import ceil
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from jobs.schema import (
    DEFAULT_LIMITS,
    MAX_NOISE_LEVEL,
    UPSCALE_FACTOR,
    Task,
    Txt2ImgRequest,
    optional_size_field,
)

IMAGE_DESCRIPTION = "a PNG, JPEG or WebP image: base64, or a data: URL (JSON); a file (multipart)"


class Img2ImgRequest(Txt2ImgRequest):
    """Body of POST /v1/img2img: SDEdit from `init_image`, running steps x strength steps."""

    init_image: str = Field(min_length=1, strict=True, description=IMAGE_DESCRIPTION)
    strength: float = Field(
        0.75, gt=0.0, le=1.0, strict=True, validate_default=True,  # the default meets steps too
        description="how far down the schedule to start: 1 ignores the image's content",
    )  # fmt: skip
    width: int | None = optional_size_field(DEFAULT_LIMITS)  # type: ignore[assignment]
    height: int | None = optional_size_field(DEFAULT_LIMITS)  # type: ignore[assignment]
    task: ClassVar[Task] = Task.img2img

    @field_validator("strength")
    @classmethod
    def _runs_a_step(cls, strength: float, info: ValidationInfo) -> float:
        """int(steps x strength) steps run (diffusers' get_timesteps): at least one must."""
        steps = info.data.get("steps")  # validated before: declared first
        if isinstance(steps, int) and int(steps * strength) < 1:
            raise ValueError(
                f"strength {strength:g} x steps {steps} runs no denoising step (the job runs "
                f"int(steps x strength)); raise strength to {ceil(1000 / steps) / 1000:g} or more, "
                "or steps"
            )
        return strength


class VariationRequest(Img2ImgRequest):
    """img2img with any prompt, the empty one included (OpenAI's image variations)."""

    prompt: str = Field("", max_length=DEFAULT_LIMITS.max_prompt_chars, strict=True)
    prompt_may_be_empty: ClassVar[bool] = True

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class InpaintRequest(Img2ImgRequest):
    """Body of POST /v1/inpaint: repaint the mask's white (or transparent) part of init_image."""

    mask_image: str = Field(
        min_length=1, strict=True,
        description=IMAGE_DESCRIPTION + "; white (or transparent, when it has alpha) = repaint",
    )  # fmt: skip
    strength: float = Field(1.0, gt=0.0, le=1.0, strict=True, validate_default=True)
    keep_unmasked: bool = Field(
        True, strict=True,
        description="paste the init image's unmasked pixels over the result (exact outside the "
        "mask, as A1111); false: the decoded image everywhere (as diffusers)",
    )  # fmt: skip
    task: ClassVar[Task] = Task.inpaint


class UpscaleRequest(Txt2ImgRequest):
    """Body of POST /v1/upscale: super-resolution x4 of `image` (the SD x4 upscaler layout)."""

    image: str = Field(min_length=1, strict=True, description=IMAGE_DESCRIPTION)
    prompt: str = Field(
        "", max_length=DEFAULT_LIMITS.max_prompt_chars, strict=True,
        description="what the image shows (may be empty)",
    )  # fmt: skip
    noise_level: int = Field(
        20, ge=0, le=MAX_NOISE_LEVEL, strict=True,
        description="noise added to the low-res image before it conditions the model: higher "
        "lets the model invent more detail and trust the input less",
    )  # fmt: skip
    width: int | None = optional_size_field(DEFAULT_LIMITS)  # type: ignore[assignment]
    height: int | None = optional_size_field(DEFAULT_LIMITS)  # type: ignore[assignment]
    task: ClassVar[Task] = Task.upscale
    prompt_may_be_empty: ClassVar[bool] = True
    scale: ClassVar[int] = UPSCALE_FACTOR

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value
