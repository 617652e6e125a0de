"""One webhook POST: resolve the host, refuse it by the SSRF rule (jobs/destinations.py), then
connect to the vetted address itself (a second lookup could answer otherwise: DNS rebinding).

Standard library `http.client`: the connection is pinned to the vetted IP while the Host header,
TLS SNI and certificate check use the URL's host name. Redirects are not followed (a 3xx is a
failed attempt), at most `max_response_bytes` of the answer are read, and the whole attempt has a
deadline: a timer shuts the socket down when it passes, whatever the receiver trickles.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jobs.destinations import DestinationPolicy, literal_address

Resolver = Callable[..., list[Any]]
USER_AGENT = "ldm-serve-webhooks/0.1"


class Refused(Exception):
    """The destination is one the SSRF rule forbids."""


@dataclass(frozen=True)
class Attempt:
    """How one POST went: an HTTP status, or an error; `result` is its metric label."""

    result: str  # 2xx, 3xx, 4xx, 5xx, timeout, network, dns, refused
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer: delivered."""
        return self.result == "2xx"

    @property
    def refused(self) -> bool:
        """Refused by the SSRF rule (not retried)."""
        return self.result == "refused"


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a fixed address; Host is the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address; SNI and the certificate check use the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class Transport:
    """POSTs bodies to vetted destinations."""

    def __init__(
        self,
        policy: DestinationPolicy,
        timeout_s: float,
        max_response_bytes: int = 4096,
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.resolver = resolver

    def vet(self, host: str, port: int) -> str:
        """The address to connect to; Refused when any address of the host is forbidden."""
        literal = literal_address(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            infos = self.resolver(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        if not addresses:
            raise socket.gaierror(f"{host} has no address")
        if self.policy.host_allowed(host):
            return addresses[0]
        for address in addresses:
            reason = self.policy.refusal(ipaddress.ip_address(address))
            if reason is not None:
                where = reason if literal is not None else f"{host} -> {reason}"
                raise Refused(f"destination refused: {where} (LDM_WEBHOOK_ALLOW lists exceptions)")
        return addresses[0]

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Attempt:
        """One attempt, never raising: the answer's status class or what went wrong."""
        parts = urlsplit(url)
        host, https = parts.hostname or "", parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            address = self.vet(host, port)
        except Refused as exc:
            return Attempt("refused", error=str(exc))
        except (OSError, UnicodeError, ValueError) as exc:
            return Attempt("dns", error=f"cannot resolve {host}: {exc}")
        kind = _PinnedHTTPS if https else _PinnedHTTP
        connection = kind(host, port, address, self.timeout_s)
        deadline = threading.Timer(self.timeout_s, _shut, (connection,))
        deadline.daemon = True
        started = time.monotonic()
        deadline.start()
        try:
            sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
            connection.request("POST", target, body=body, headers=sent)
            response = connection.getresponse()
            response.read(self.max_response_bytes)
            status = response.status
        except TimeoutError as exc:
            return Attempt("timeout", error=f"no answer within {self.timeout_s:g} s ({exc})")
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() - started >= self.timeout_s:
                return Attempt("timeout", error=f"no answer within {self.timeout_s:g} s")
            return Attempt("network", error=f"{type(exc).__name__}: {exc}")
        finally:
            deadline.cancel()
            connection.close()
        error = None if 200 <= status < 300 else f"HTTP {status}"
        if 300 <= status < 400:
            error = f"HTTP {status}: redirects are not followed"
        return Attempt(f"{status // 100}xx", status=status, error=error)


def _shut(connection: http.client.HTTPConnection) -> None:
    """End an attempt that outlived its deadline (a blocked read returns at once)."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
