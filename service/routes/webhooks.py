"""/v1/webhooks/secret: the caller's webhook signing secret (one per API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from jobs.webhooks import WebhookSecrets
from service.auth import Owner
from service.openapi import problem_responses

router = APIRouter(tags=["webhooks"])


class WebhookSecret(BaseModel):
    """The key that signs this API key's webhooks (Standard Webhooks)."""

    secret: str = Field(description="`whsec_<base64>`: verify `webhook-signature` with it")
    algorithm: str = Field(default="v1 (HMAC-SHA256)", description="the `webhook-signature` scheme")


async def get_secrets(request: Request) -> WebhookSecrets:
    """The app's webhook secrets (app.state.webhook_secrets)."""
    return request.app.state.webhook_secrets


@router.get(
    "/v1/webhooks/secret",
    response_model=WebhookSecret,
    responses=problem_responses(401, 503),
    summary="The caller's webhook signing secret",
)
def webhook_secret(
    owner: Owner, secrets: Annotated[WebhookSecrets, Depends(get_secrets)]
) -> WebhookSecret:
    """The same secret every time for one API key; another key gets another."""
    return WebhookSecret(secret=secrets.for_owner(owner))
