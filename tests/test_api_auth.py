"""API keys: 401 problem+json, constant-time comparison, owner = sha256(key), never the key."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from jobs import keys
from jobs.store import JobStore
from service import auth
from tests.api_harness import KEY_A, ApiServer, api_fixture, store_fixture  # noqa: F401

JOB = f"/v1/jobs/{uuid.uuid4()}"
PROTECTED = [
    ("POST", "/v1/txt2img"),
    ("GET", JOB),
    ("DELETE", JOB),
    ("GET", f"{JOB}/events"),
    ("GET", f"{JOB}/images/0"),
    ("GET", "/v1/models"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-key", "Basic a2V5LWE6", f"Bearer {KEY_A}x", "Bearer"]
)
def test_v1_routes_need_a_valid_key(
    api: ApiServer, store: JobStore, method: str, path: str, header: str | None
) -> None:
    with api.client(None) as client:
        headers = {"Authorization": header} if header else {}
        reply = client.request(method, path, headers=headers, json={"prompt": "x"})
    assert reply.status_code == 401
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.json()["type"] == "urn:ldm-serve:problem:unauthorized"
    assert store.queue("default").count == 0


def test_basic_auth_takes_the_key_as_password(api: ApiServer, store: JobStore) -> None:
    """A1111 clients authenticate with HTTP Basic (`--api-auth`): any user, the key as password."""
    import base64

    def basic(credentials: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}

    with api.client(None) as client:
        assert client.get("/v1/models", headers=basic(f"anyone:{KEY_A}")).status_code == 200
        for bad in (f"{KEY_A}:", "anyone:wrong", KEY_A, f"anyone:{KEY_A}x"):
            assert client.get("/v1/models", headers=basic(bad)).status_code == 401, bad
        assert client.get("/v1/models", headers={"Authorization": "Basic %%%"}).status_code == 401


def test_operational_routes_are_open(api: ApiServer, store: JobStore) -> None:
    with api.client(None) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/readyz").status_code == 503  # no worker, but not 401
        assert client.get("/openapi.json").status_code == 200


def test_owner_is_key_hash_and_key_is_never_stored(api: ApiServer, store: JobStore) -> None:
    with api.client() as client:
        reply = client.post("/v1/txt2img", json={"prompt": "x"}, headers={"Idempotency-Key": "k"})
    job_id = reply.json()["id"]
    assert store.get(job_id).owner == hashlib.sha256(KEY_A.encode()).hexdigest()  # type: ignore[union-attr]
    for name in store.redis.scan_iter("*"):
        assert KEY_A.encode() not in name
        if store.redis.type(name) == b"string":
            assert KEY_A.encode() not in (store.redis.get(name) or b"")
    assert store.redis.exists(keys.idempotency(auth.owner_id(KEY_A), "k"))


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    ring = auth.KeyRing(["first", "second", "third"])
    assert ring.owner_of("first") == auth.owner_id("first")
    assert len(calls) == 3, "every key is compared, no early exit on a match"
    assert ring.owner_of("nope") is None and len(calls) == 6
    assert not auth.KeyRing([]).enabled
