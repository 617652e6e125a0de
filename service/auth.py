"""Optional API keys: `Authorization: Bearer <key>`, compared in constant time; HTTP Basic with
the key as the password (any user name) too, for AUTOMATIC1111 clients (`--api-auth`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Problem

logger = logging.getLogger(__name__)

# Owner of every job when authentication is off.
ANONYMOUS = "anonymous"

bearer = HTTPBearer(auto_error=False, description="API key; required when LDM_API_KEYS is set")


def owner_id(key: str) -> str:
    """Stable owner id of a key: its sha256, so the key itself is never stored."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured API keys; checks a presented key against all of them in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured."""
        return bool(self._keys)

    def owner_of(self, presented: str) -> str | None:
        """Owner id of a valid key, else None; compares with every key (no early exit)."""
        candidate = presented.encode()
        match = False
        for key in self._keys:
            match |= hmac.compare_digest(key, candidate)
        return owner_id(presented) if match else None


def unauthorized(detail: str, error: str) -> Problem:
    """401 with a Bearer challenge (`error`: RFC 6750's code, e.g. invalid_token; "" for none)."""
    challenge = 'Bearer realm="ldm-serve"' + (f', error="{error}"' if error else "")
    return Problem(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge}
    )


async def get_keyring(request: Request) -> KeyRing:
    """The app's API keys (app.state.keyring)."""
    return request.app.state.keyring


def basic_password(request: Request) -> str | None:
    """The password of an `Authorization: Basic` header (A1111's `--api-auth user:pass`)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _, colon, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if colon else None


async def require_owner(
    request: Request,
    ring: Annotated[KeyRing, Depends(get_keyring)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """Owner id of the caller; 401 problem when keys are configured and none/a wrong one is sent."""
    if not ring.enabled:
        return ANONYMOUS
    presented = credentials.credentials if credentials is not None else basic_password(request)
    if presented is None:
        raise unauthorized("missing Authorization: Bearer <api key> header", "")
    owner = ring.owner_of(presented)
    if owner is None:
        logger.info("rejected an invalid API key on %s %s", request.method, request.url.path)
        raise unauthorized("invalid API key", "invalid_token")
    return owner


Owner = Annotated[str, Depends(require_owner)]
