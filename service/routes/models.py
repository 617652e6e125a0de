"""GET /v1/models: models served, with live worker counts."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobs import keys
from jobs.schema import OutputFormat, Sampler, Task
from service.auth import Owner
from service.deps import Settings, Store
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
        description="what the model's workers run (an inpainting UNet: inpaint only; an "
        "upscaler: upscale only); null "
        "until one of its workers has started"
    )


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
    tasks = store.model_tasks(settings.models)
    return ModelList(
        data=[
            ModelInfo(
                name=name,
                default=name == settings.model_name,
                queue=keys.queue_name(name),
                workers=store.live_workers(name),
                queue_depth=store.queue(name).count,
                samplers=list(Sampler),
                output_formats=list(OutputFormat),
                tasks=[Task(t) for t in tasks[name] or () if t in Task.__members__] or None,
            )
            for name in settings.models
        ]
    )
