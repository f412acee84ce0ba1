"""The time the use cases read: one function, so a test can move it without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """A timestamp as the API and the manifest show it (UTC, ISO 8601, Z)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
