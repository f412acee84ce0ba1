"""Outbound URL checks against SSRF, and requests pinned to the address that was checked."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

MAX_URL_LENGTH = 2048
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL may not be fetched or called."""


@dataclass(frozen=True)
class CheckedURL:
    """A URL whose host resolved to `address`, which passed the checks: connect there only."""

    url: str
    host: str
    port: int
    address: str | None  # None when private addresses are allowed: nothing to pin

    def pinned(self) -> str:
        """The URL with its host replaced by the checked address."""
        if self.address is None:
            return self.url
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def host_header(self) -> str:
        parts = urlsplit(self.url)
        return self.host if parts.port is None else f"{self.host}:{parts.port}"


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for any address outside the public internet: private, loopback, link-local,
    shared (100.64/10, carrier-grade NAT, where cloud metadata services also live), reserved,
    documentation, benchmarking, multicast, unspecified, and IPv4 mapped or embedded in IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address in NAT64:  # a NAT64 gateway would connect to the IPv4 address inside
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return non_public(embedded)
        if address.teredo is not None:
            return True
    return not address.is_global or address.is_multicast or address.is_unspecified


def check_outbound_url(
    url: str, *, allowed_hosts: Sequence[str] | None, allow_private: bool
) -> CheckedURL:
    """Refuse a URL whose scheme, host, port or resolved address is not allowed; return the
    address to connect to."""
    parts, host, port = _parse(url)
    if allowed_hosts is not None:
        netloc = host if port is None else f"{host}:{port}"
        if host not in allowed_hosts and netloc not in allowed_hosts:
            raise UnsafeURL(f"host {netloc!r} is not in the allow-list")
    effective_port = port or (443 if parts.scheme == "https" else 80)
    if allow_private:
        return CheckedURL(url=url, host=host, port=effective_port, address=None)
    return CheckedURL(
        url=url, host=host, port=effective_port, address=_public_address(host, effective_port)
    )


def _parse(url: str) -> tuple[SplitResult, str, int | None]:
    """The URL's parts, host and port, or UnsafeURL saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) < 33 or ord(char) > 126 for char in url):
        raise UnsafeURL("the URL holds spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"the URL is malformed: {exc}") from None
    if parts.scheme not in {"http", "https"}:
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("the URL may not carry credentials")
    if port == 0:
        raise UnsafeURL("port 0 is not allowed")
    return parts, parts.hostname, port


def _public_address(host: str, port: int) -> str:
    """The address to connect to, if every address the host resolves to is public."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UnsafeURL(f"host {host!r} does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UnsafeURL(f"host {host!r} does not resolve")
    if any(non_public(address) for address in addresses):
        # Every answer is checked: a name that resolves to one public and one private
        # address must not be connected to at all.
        raise UnsafeURL(f"host {host!r} resolves to a non-public address")
    return str(addresses[0])


def pinned_request(
    client: httpx.Client, method: str, checked: CheckedURL, **kwargs: Any
) -> httpx.Request:
    """A request to the checked address, with the original Host header and TLS server name,
    so a second DNS answer (rebinding) cannot send it elsewhere."""
    headers = dict(kwargs.pop("headers", None) or {})
    extensions: dict[str, Any] = {}
    if checked.address is not None:
        headers["Host"] = checked.host_header()
        if checked.url.startswith("https:"):
            extensions["sni_hostname"] = checked.host
    return client.build_request(
        method, checked.pinned(), headers=headers, extensions=extensions, **kwargs
    )
