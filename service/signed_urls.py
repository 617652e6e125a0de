"""Image URLs that whoever holds them may fetch until they expire, as OpenAI's `response_format=url`
answers (a plain GET, an <img src>, no key): HMAC-SHA256 over job, index and expiry under a key
derived from the server secret, checked in constant time by the image route."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials

from service.auth import KeyRing, bearer, get_keyring, require_owner, unauthorized

URL_CONTEXT = b"ldm-serve signed image url v1\x00"  # keeps these MACs apart from webhook secrets
MAX_TTL_S = 3600  # OpenAI's image URLs last an hour; ours no longer than the image itself


def url_key(server_key: bytes) -> bytes:
    """The signing key: the server secret (LDM_WEBHOOK_SECRET or Redis's) under our context."""
    return hmac.new(server_key, URL_CONTEXT, hashlib.sha256).digest()


def app_url_key(request: Request) -> bytes:
    """This deployment's signing key (the server secret may be read from Redis once: blocking)."""
    return url_key(request.app.state.webhook_secrets.server_key())


def signature(key: bytes, job_id: str, index: int, expires: int) -> str:
    """Hex HMAC-SHA256 of `job_id/index/expires`."""
    return hmac.new(key, f"{job_id}/{index}/{expires}".encode(), hashlib.sha256).hexdigest()


def signed_path(key: bytes, job_id: str, index: int, ttl_s: int, now: float | None = None) -> str:
    """The image route's path with `expires` (Unix seconds) and `signature` query parameters."""
    expires = int(now if now is not None else time.time()) + min(ttl_s, MAX_TTL_S)
    sig = signature(key, job_id, index, expires)
    return f"/v1/jobs/{job_id}/images/{index}?expires={expires}&signature={sig}"


@dataclass(frozen=True)
class SignedUrl:
    """A signed URL's query parameters, as the image route received them."""

    expires: int
    signature: str

    def check(self, key: bytes, job_id: str, index: int) -> None:
        """401 (as a wrong API key) unless this signs the image until `expires`, still ahead."""
        expected = signature(key, job_id, index, self.expires).encode()
        if (
            not hmac.compare_digest(expected, self.signature.encode())
            or time.time() >= self.expires
        ):
            raise unauthorized("the image URL's signature is invalid or expired", "invalid_token")


async def owner_unless_signed(
    request: Request,
    ring: Annotated[KeyRing, Depends(get_keyring)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    signature: Annotated[str | None, Query(max_length=64, description="of a signed URL")] = None,
    expires: Annotated[int | None, Query(ge=0, description="of a signed URL (Unix s)")] = None,
) -> str | SignedUrl:
    """The signed URL's parameters when it carries any (the route checks them), else the
    caller's owner id as every other route asks for it (401 without a key)."""
    if signature is not None or expires is not None:
        return SignedUrl(expires or 0, signature or "")
    return await require_owner(request, ring, credentials)


OwnerUnlessSigned = Annotated[str | SignedUrl, Depends(owner_unless_signed)]
