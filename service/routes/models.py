"""GET /v1/models: models served, with live worker counts."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobs import keys
from jobs.model_profile import read_profile
from jobs.schema import OutputFormat, Sampler, Task
from service.auth import Owner
from service.deps import Settings, Store
from service.errors import Problem
from service.openapi import problem_responses

router = APIRouter(tags=["models"])


class ModelInfo(BaseModel):
    """One served model and the workers consuming its queue."""

    name: str
    default: bool
    queue: str
    workers: int
    queue_depth: int
    samplers: list[Sampler]
    output_formats: list[OutputFormat]
    tasks: list[Task] | None = Field(
        description="what the model's workers run, each at its route: txt2img and img2img, "
        "inpaint (an inpainting UNet: inpaint only), upscale (an upscaler or LDM-SR: upscale "
        "only), sample (a model without text: unconditional or class-conditional); null until "
        "one of its workers has started"
    )
    native_size: int | None = Field(
        None, description="px per side the model draws best at (/v1/sample's default size)"
    )
    num_classes: int | None = Field(
        None,
        description="a class-conditional model's classes: /v1/sample takes `class_label` 0.."
        "num_classes-1 or a name (GET /v1/models/{name}/classes); null: it takes no class",
    )


class ClassList(BaseModel):
    """GET /v1/models/{name}/classes: a class-conditional model's class names by index."""

    data: list[str] = Field(description="names of classes 0..n-1 (comma-separated synonyms)")


class ModelList(BaseModel):
    """GET /v1/models."""

    data: list[ModelInfo]


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=problem_responses(401, 503),
    summary="Models served",
)
def list_models(owner: Owner, store: Store, settings: Settings) -> ModelList:
    """Every accepted model with its rq queue, live workers and queue depth."""
    del owner  # authentication only
    tasks = store.fleet.model_tasks(settings.models)
    profiles = {name: read_profile(store.redis, name) for name in settings.models}
    return ModelList(
        data=[
            ModelInfo(
                name=name,
                default=name == settings.model_name,
                queue=keys.queue_name(name),
                workers=store.fleet.live_workers(name),
                queue_depth=store.queue(name).count,
                samplers=list(Sampler),
                output_formats=list(OutputFormat),
                tasks=[Task(t) for t in tasks[name] or () if t in Task.__members__] or None,
                native_size=profiles[name].native_size,
                num_classes=_count(profiles[name].class_names),
            )
            for name in settings.models
        ]
    )


def _count(names: tuple[str, ...] | None) -> int | None:
    return None if names is None else len(names)


@router.get(
    "/v1/models/{name}/classes",
    response_model=ClassList,
    responses=problem_responses(401, 404, 503),
    summary="Class names of a class-conditional model",
)
def list_classes(name: str, owner: Owner, store: Store, settings: Settings) -> ClassList:
    """Class names by index, as its workers published them; 404 for other models."""
    del owner  # authentication only
    names = read_profile(store.redis, name).class_names if name in settings.models else None
    if names is None:
        raise Problem(404, "not-found", "Not found", f"no class-conditional model {name!r}")
    return ClassList(data=list(names))
