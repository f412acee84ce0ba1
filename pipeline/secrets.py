"""Secret values whose repr and str never show them: only `reveal()` does, where it is used."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

MASK = "**********"


class Secret:
    """A credential; printing, logging or serialising it shows a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self._value else "Secret('')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # A pickled or JSON-encoded secret is the mask, never the value.
        return (str, (MASK,))


class ApiKeys:
    """Tenants' API keys; looking one up compares every key in constant time."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs = tuple((Secret(key), tenant) for key, tenant in pairs)

    def tenant_for(self, presented: str) -> str | None:
        found = None
        for key, tenant in self._pairs:
            # Every key is compared, so the time taken does not say which one matched.
            if hmac.compare_digest(key.reveal().encode(), presented.encode()):
                found = tenant
        return found

    def tenants(self) -> list[str]:
        return sorted({tenant for _key, tenant in self._pairs})

    def keys(self) -> Iterator[Secret]:
        return (key for key, _tenant in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ApiKeys):
            return NotImplemented
        return self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __repr__(self) -> str:
        return f"ApiKeys(tenants={self.tenants()!r})"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """The URL with any password replaced by the mask (for display only)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
