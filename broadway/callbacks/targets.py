"""Where a callback may be sent: the URL check at submission and the resolver used at delivery.

Always refused: link-local addresses (169.254.0.0/16, fe80::/10), where every cloud serves its
instance metadata and credentials, the other cloud metadata addresses below, and addresses that
are no single host (unspecified, multicast, broadcast); also IPv4 addresses embedded in IPv6
(::ffff:a.b.c.d, NAT64, 6to4), which reach the same hosts. With `--callback-allow-networks`, an
address must moreover be inside one of those networks. Everything else (loopback included) is
allowed by default: an operator who runs the LMS next to Broadway needs it.

Checked twice:
- at submission, `check_callback_url(url, policy)` (no DNS: the handler answers 400 at once): the
  scheme, the shape, metadata host names, and a host that is an address literal (in any form the
  resolver would accept, such as 0xa9fea9fe);
- at delivery, `CheckedResolver` is the HTTP client's resolver: it resolves with the event loop's
  getaddrinfo, checks every address, and hands the client only the checked ones, so the connection
  goes to an address that was checked (a DNS answer that changes between a check and the connect,
  "DNS rebinding", cannot slip a refused address in). A host with any always-refused address is
  refused as a whole: that is an attack or a misconfiguration, not a host to try its other addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tornado.netutil import Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048

LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
# Metadata and agent endpoints outside link-local: AWS's IPv6 IMDS, Alibaba Cloud's metadata,
# Azure's WireServer. (AWS, GCP, Azure IMDS and Oracle use 169.254.169.254, in LINK_LOCAL.)
METADATA = (
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("168.63.129.16/32"),
)
METADATA_HOSTNAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")


class CallbackTargetError(ValueError):
    """A callback URL or the address it resolves to is not allowed; the message says why."""


@dataclass(frozen=True)
class TargetPolicy:
    """The networks callbacks may reach (empty: any but the always-refused ones)."""

    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> TargetPolicy:
        """From Config.callback_allow_networks (already validated by Config.from_args)."""
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be a callback target, or None if it may."""
        why = always_refused(address)
        if why is None and self.allow_networks and not any(_contains(n, address) for n in self.allow_networks):
            why = f"{address} is outside --callback-allow-networks"
        return why


def always_refused(address: IPAddress) -> str | None:
    """Why `address` is never a callback target (link-local, metadata, not one host), or None."""
    for candidate in (address, *_embedded_ipv4(address)):
        if any(candidate in n for n in LINK_LOCAL if n.version == candidate.version):
            return f"{address} is link-local (where clouds serve instance metadata)"
        if any(candidate in n for n in METADATA if n.version == candidate.version):
            return f"{address} is a cloud metadata address"
        if candidate.is_unspecified or candidate.is_multicast or candidate == ipaddress.IPv4Address("255.255.255.255"):
            return f"{address} is not the address of one host"
    return None


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches: mapped, NAT64, 6to4, IPv4-compatible."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(low32)
    return found


def _contains(network: IPNetwork, address: IPAddress) -> bool:
    if network.version == address.version:
        return address in network
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped is not None and mapped in network


def parse_address(text: str) -> IPAddress | None:
    """The address a host string denotes, if it is an address literal (no DNS), else None.

    Besides the usual forms, accepts what inet_aton accepts (0xa9fea9fe, 2852039166, 169.254.43518),
    because getaddrinfo would connect to those too.
    """
    host = text.rstrip(".").split("%", 1)[0]  # a trailing root dot; an IPv6 zone id
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_host(host: str, policy: TargetPolicy) -> None:
    """Raise CallbackTargetError if the host's name or literal address is refused (no DNS)."""
    if host.rstrip(".").lower() in METADATA_HOSTNAMES:
        raise CallbackTargetError(f"callback host {host!r} is a cloud metadata service")
    address = parse_address(host)
    if address is not None:
        why = policy.refusal(address)
        if why:
            raise CallbackTargetError(f"callback target refused: {why}")


def check_callback_url(url: Any, policy: TargetPolicy) -> str:
    """The URL, if it may be a callback target as far as can be told without DNS; else raise
    CallbackTargetError naming the problem (the handler answers 400 with it)."""
    if not isinstance(url, str):
        raise CallbackTargetError("callback_url must be a string")
    if len(url) > MAX_URL_LENGTH:
        raise CallbackTargetError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise CallbackTargetError("callback_url contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise CallbackTargetError(f"callback_url is not a valid URL: {e}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise CallbackTargetError("callback_url must be an http:// or https:// URL")
    if not parts.hostname:
        raise CallbackTargetError("callback_url has no host")
    if port == 0:
        raise CallbackTargetError("callback_url has port 0")
    check_host(parts.hostname, policy)
    return url


def host_for_log(url: str) -> str:
    """The URL's host (and port), all that log lines show: paths and queries may carry tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"
    except ValueError:
        return "?"


class CheckedResolver(Resolver):
    """A tornado Resolver that returns only addresses the policy allows, or raises
    CallbackTargetError; give it to the HTTP client so it connects to exactly those."""

    def initialize(self, policy: TargetPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[Any]:
        check_host(host, self.policy)
        literal = parse_address(host)
        if literal is not None:
            infos: list[Any] = [(socket.AF_INET if literal.version == 4 else socket.AF_INET6, (str(literal), port))]
        else:
            loop = asyncio.get_running_loop()
            try:
                found = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise CallbackTargetError(f"cannot resolve the callback host: {e.strerror}") from None
            infos = [(fam, sockaddr) for fam, _, _, _, sockaddr in found]
        allowed: list[Any] = []
        refused: list[str] = []
        for fam, sockaddr in infos:
            address = parse_address(str(sockaddr[0]))
            if address is None:
                continue
            bad = always_refused(address)
            if bad:
                raise CallbackTargetError(f"callback target refused after DNS: {bad}")
            why = self.policy.refusal(address)
            if why:
                refused.append(why)
            else:
                allowed.append((fam, sockaddr))
        if not allowed:
            raise CallbackTargetError(
                "callback target refused after DNS: " + ("; ".join(refused) or "no usable address")
            )
        return allowed
