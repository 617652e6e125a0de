"""Webhooks without processes: the signature (spec vector, the standardwebhooks verifier), the SSRF
rule, the URL rule against its own schema pattern, the retry schedule, the body."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import standardwebhooks
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobs.destinations import DestinationPolicy, blocked_reason, literal_address
from jobs.outbox import OutboxMessage
from jobs.webhooks import URL_PATTERN, Webhook
from tests.conftest import REPO
from webhooks.deliverer import retry_delay
from webhooks.payload import render
from webhooks.signing import secret_bytes, sign, signed_headers
from webhooks.transport import Refused, Transport

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
ALLOW_ALL = DestinationPolicy.parse("0.0.0.0/0,::/0")


def test_signature_matches_the_spec_test_vector() -> None:
    key = secret_bytes(VECTOR_SECRET)
    assert sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_standardwebhooks_verifier_accepts_our_headers_and_rejects_a_change() -> None:
    body = b'{"type":"job.completed","data":{"id":"x"}}'
    headers = signed_headers(secret_bytes(VECTOR_SECRET), "msg_1", int(time.time()), body)
    verifier = standardwebhooks.Webhook(VECTOR_SECRET)
    assert verifier.verify(body, headers)["type"] == "job.completed"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(body.replace(b"x", b"y"), headers)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.100.100.200", "cloud metadata"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "cloud metadata"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback, IPv4 127.0.0.1 inside IPv6"),
        ("::ffff:a9fe:a9fe", "cloud metadata, IPv4 169.254.169.254 inside IPv6"),
        ("64:ff9b::a00:1", "private, IPv4 10.0.0.1 inside IPv6"),
        ("2002:7f00:1::", "loopback, IPv4 127.0.0.1 inside IPv6"),
        ("::127.0.0.1", "loopback, IPv4 127.0.0.1 inside IPv6"),
    ],
)
def test_internal_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"),
     ("0177.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("example.com", None), ("1e100.net", None)],
)  # fmt: skip
def test_literal_addresses_in_every_form_the_resolver_reads(host: str, address: str) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == address


def test_the_allow_list_lets_listed_networks_and_hosts_through() -> None:
    policy = DestinationPolicy.parse(" 127.0.0.0/8, ::1 ,Receiver.Internal. ")
    assert policy.refusal(ipaddress.ip_address("127.0.0.5")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) is None
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) == "10.0.0.1 is a private address"
    assert policy.host_allowed("receiver.internal")
    assert policy.literal_refusal("169.254.169.254") == (
        "169.254.169.254 is a cloud metadata address"
    )
    assert policy.literal_refusal("hooks.example.com") is None  # names: checked when delivering


def resolver(*addresses: str) -> Any:
    """A getaddrinfo stand-in answering `addresses` for any host."""

    def lookup(host: str, port: int, **_: object) -> list[Any]:
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]  # fmt: skip

    return lookup


def test_delivery_checks_every_resolved_address() -> None:
    public = Transport(DestinationPolicy(), 1.0, resolver=resolver("93.184.215.14"))
    assert public.vet("hooks.example.com", 443) == "93.184.215.14"
    rebinding = Transport(DestinationPolicy(), 1.0, resolver=resolver("93.184.215.14", "10.1.2.3"))
    with pytest.raises(Refused, match=r"hooks.example.com -> 10.1.2.3 is a private address"):
        rebinding.vet("hooks.example.com", 443)
    loopback = Transport(DestinationPolicy(), 1.0, resolver=resolver("::1"))
    with pytest.raises(Refused, match="loopback"):
        loopback.vet("localhost", 80)
    allowed = Transport(DestinationPolicy.parse("localhost"), 1.0, resolver=resolver("127.0.0.1"))
    assert allowed.vet("localhost", 80) == "127.0.0.1"


def test_a_refused_destination_is_never_contacted() -> None:
    attempt = Transport(DestinationPolicy(), 1.0).post("http://127.0.0.1:9/x", b"{}", {})
    assert attempt.refused and "loopback" in (attempt.error or "")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com", "http://user:pw@host/",
     "http://host:0/", "http://host:65536/", "http://[::1", "http://exa mple.com/", "http://",
     "https://host/p\x00", "//host/x", "http://-host/", "HTTP://host/"],
)  # fmt: skip
def test_urls_outside_the_rule_are_invalid(url: str) -> None:
    with pytest.raises(ValidationError, match="http:// or https:// URL"):
        Webhook(url=url)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(re.compile(URL_PATTERN[:-1] + r"\Z"), fullmatch=True))
def test_every_url_the_schema_pattern_admits_is_accepted(url: str) -> None:
    """What the OpenAPI `pattern` promises (schemathesis sends such URLs), the validator keeps;
    the host it reads is the one urllib (and so the deliverer) reads."""
    webhook = Webhook(url=url)
    assert ALLOW_ALL.literal_refusal(webhook.host) is None
    assert webhook.host.lower() == urlsplit(url).hostname


def test_events_default_and_dedupe() -> None:
    assert Webhook(url="https://a.example/x").events == ["completed", "failed"]
    assert Webhook(url="https://a.example/x", events=["progress", "progress"]).events == [
        "progress"
    ]


def test_retry_schedule_spans_about_an_hour_with_the_defaults() -> None:
    """Base 5 s, cap 600 s, max age 3600 s: ~12 retries if jitter draws high, ~17 if low."""
    for draw, expected in ((1.0, range(10, 14)), (0.0, range(15, 20))):
        elapsed, retries = 0.0, 0
        while elapsed + (delay := retry_delay(retries + 1, 5.0, 600.0, lambda d=draw: d)) <= 3600:
            elapsed, retries = elapsed + delay, retries + 1
        assert retries in expected, (draw, retries)
    assert retry_delay(1, 5.0, 600.0, lambda: 0.0) == 2.5
    assert retry_delay(40, 5.0, 600.0, lambda: 1.0) == 600.0


def message(**fields: object) -> OutboxMessage:
    base = {"id": "msg_j_completed", "job_id": "j", "event": "completed", "url": "https://a.b/",
            "owner": "o", "status": "succeeded", "model": "default", "task": "txt2img",
            "num_images": 2, "step": "4", "total": "4", "occurred_at": "1700000000.5",
            "enqueued_at": "1700000000.5"}  # fmt: skip
    return OutboxMessage.model_validate({**base, **fields})


def test_the_body_is_the_same_bytes_on_every_attempt() -> None:
    first = render(message())
    assert first == render(message(attempts=7))
    assert first.startswith(b'{"type":"job.completed","timestamp":"2023-11-14T22:13:20.500000Z"')
    assert b'"images":["/v1/jobs/j/images/0","/v1/jobs/j/images/1"]' in first
    failed = render(message(event="failed", status="expired", error_type="expired"))
    assert b'"error":{"type":"expired","message":""}' in failed and b'"images":[]' in failed


def test_the_deliverer_imports_no_torch_and_no_http_framework() -> None:
    code = (
        "import sys, cli.webhooks, webhooks.deliverer; "
        "bad = {'torch', 'model', 'workers', 'service', 'fastapi'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
