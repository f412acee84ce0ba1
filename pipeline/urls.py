"""Outbound URL checks against SSRF: scheme, allow-list, and no private addresses by default."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit


class UnsafeURL(ValueError):
    """The URL may not be fetched or called."""


def check_outbound_url(url: str, *, allowed_hosts: Sequence[str] | None,
                       allow_private: bool) -> None:
    """Refuse a URL whose scheme, host or resolved address is not allowed."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    if allowed_hosts is not None:
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        if host not in allowed_hosts and netloc not in allowed_hosts:
            raise UnsafeURL(f"host {netloc!r} is not in the allow-list")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        raise UnsafeURL(f"host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (address.is_private or address.is_loopback or address.is_link_local
                or address.is_reserved or address.is_multicast or address.is_unspecified):
            raise UnsafeURL(f"host {host!r} resolves to a non-public address")
