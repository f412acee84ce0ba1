"""Limits on what a request may hold before anything parses it."""

from __future__ import annotations

import re
from itertools import accumulate

MAX_JSON_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, without parsing it (strings are
    skipped, so a bracket inside one does not count)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    steps = (1 if byte in b"[{" else -1 for byte in brackets)
    return max(accumulate(steps, initial=0))


def nests_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests deeper than `limit`. A text with no more opening brackets
    than that cannot, and is let through without the scan (a webhook holds about four)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return json_depth(raw) > limit
