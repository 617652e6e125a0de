"""A request's webhook at submission: the SSRF rule on literal addresses (422 naming the field),
the record's webhook fields, and the synchronous dialects' `X-Webhook-URL` / `X-Webhook-Events`
headers (OpenAI and A1111 bodies have no room for one)."""

from __future__ import annotations

from functools import lru_cache
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from jobs.destinations import DestinationPolicy
from jobs.record import JobRecord
from jobs.schema import Txt2ImgRequest
from jobs.webhooks import Webhook, WebhookEvent
from service.settings import ApiSettings

URL_HEADER = "X-Webhook-URL"
EVENTS_HEADER = "X-Webhook-Events"
Req = TypeVar("Req", bound=Txt2ImgRequest)


@lru_cache(maxsize=8)
def policy(allow: str) -> DestinationPolicy:
    """The SSRF rule for an LDM_WEBHOOK_ALLOW value (parsed once)."""
    return DestinationPolicy.parse(allow)


def _refused(loc: tuple[str, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def check_webhook(
    webhook: Webhook | None,
    settings: ApiSettings,
    loc: tuple[str, ...] = ("body", "webhook", "url"),
) -> None:
    """422 when the webhook URL's host is a forbidden literal address (names are resolved and
    checked again by the deliverer, after every lookup)."""
    if webhook is None:
        return
    reason = policy(settings.webhook_allow).literal_refusal(webhook.host)
    if reason is not None:
        raise _refused(loc, f"{reason}; webhooks may not reach it (LDM_WEBHOOK_ALLOW)")


def attach_webhook(record: JobRecord, webhook: Webhook | None, settings: ApiSettings) -> JobRecord:
    """The record with its webhook (and the progress throttle, when progress is asked for)."""
    if webhook is None:
        return record
    every = None
    if WebhookEvent.progress in webhook.events:
        every = settings.webhook_progress_interval_s
    return record.model_copy(update={"webhook": webhook, "webhook_progress_s": every})


def header_webhook(request: Request, settings: ApiSettings) -> Webhook | None:
    """The webhook named by the dialects' headers (events: comma-separated, default completed,
    failed); 422 naming the header when one is wrong or refused."""
    url = request.headers.get(URL_HEADER)
    events = request.headers.get(EVENTS_HEADER)
    if url is None:
        if events is not None:
            raise _refused(("header", EVENTS_HEADER), f"needs the {URL_HEADER} header")
        return None
    fields: dict[str, object] = {"url": url}
    if events is not None:
        fields["events"] = [name.strip() for name in events.split(",") if name.strip()]
    try:
        webhook = Webhook.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        header = URL_HEADER if error["loc"][:1] == ("url",) else EVENTS_HEADER
        message = str(error["msg"]).removeprefix("Value error, ")
        raise _refused(("header", header), message) from None
    check_webhook(webhook, settings, ("header", URL_HEADER))
    return webhook


def with_header_webhook(request: Request, body: Req, settings: ApiSettings) -> Req:
    """The dialect's request with the headers' webhook, if any."""
    webhook = header_webhook(request, settings)
    return body if webhook is None else body.model_copy(update={"webhook": webhook})
