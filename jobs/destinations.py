"""Which webhook destinations may be reached: the SSRF rule, shared by the API and the deliverer.

An address is refused when it is loopback, private, link-local, CGNAT, multicast, unspecified,
reserved, documentation, cloud metadata or otherwise not globally routable; IPv4 embedded in IPv6
(mapped, compatible, NAT64, 6to4) is judged as the IPv4 address it carries. LDM_WEBHOOK_ALLOW
(comma-separated CIDRs, addresses or host names) lets listed destinations through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, why it is refused), most specific first: the first match names the reason.
BLOCKED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("169.254.169.254/32", "cloud metadata"),  # AWS, GCP, Azure, OpenStack, Oracle
        ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
        ("fd00:ec2::254/128", "cloud metadata"),  # AWS over IPv6
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "CGNAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # 255.255.255.255 (broadcast) included
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
        ("100::/64", "discard"),
        ("2001:db8::/32", "documentation"),
    )
)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in NAT64) or (
        address in IPV4_COMPATIBLE and int(address) > 1
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` is no webhook destination (None: a public address)."""
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = blocked_reason(inner)
        return f"{reason}, IPv4 {inner} inside IPv6" if reason else None
    for network, reason in BLOCKED:
        if address.version == network.version and address in network:
            return reason
    return None if address.is_global else "not globally routable"


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host spells literally: IPv6 in brackets, IPv4 in any form the C
    resolver accepts (`127.1`, `0x7f000001`, `2130706433`); None for a host name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if all(part and part[0].isdigit() for part in host.split(".")):
        try:  # numeric forms inet_aton (and so getaddrinfo) reads as an IPv4 address
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class DestinationPolicy:
    """The SSRF rule with this deployment's allow list (LDM_WEBHOOK_ALLOW)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, allow: str | Iterable[str]) -> DestinationPolicy:
        """Comma-separated CIDRs, addresses and host names (names match exactly, any case)."""
        entries = allow.split(",") if isinstance(allow, str) else list(allow)
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in (item.strip() for item in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        """Whether a host name is listed (its addresses are then not checked)."""
        return host.lower().rstrip(".") in self.hosts

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached (None: it may), the allow list considered."""
        inner = embedded_ipv4(address)
        for candidate in (address, inner):
            if candidate is not None and any(
                candidate.version == net.version and candidate in net for net in self.networks
            ):
                return None
        reason = blocked_reason(address)
        return f"{address} is a {reason} address" if reason else None

    def literal_refusal(self, host: str) -> str | None:
        """Submission-time check of a URL's host: refused when it is a blocked literal address
        (host names are resolved and checked when delivering)."""
        if self.host_allowed(host):
            return None
        address = literal_address(host)
        return self.refusal(address) if address is not None else None
