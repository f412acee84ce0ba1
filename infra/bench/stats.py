"""The benchmark's arithmetic: percentiles, ratios to the floors around a round, targets."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The figures of the last line, in its order.
FIGURES = (
    "e2e_ratio",
    "cpu_ratio",
    "receiver_ratio",
    "store_p99_ms",
    "copy_p99_ms",
    "redis_bytes_per_image",
    "p99_growth",
)
_FORMATS = {"store_p99_ms": ".1f", "copy_p99_ms": ".1f", "redis_bytes_per_image": ".0f"}


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` of values lie (nearest rank); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil(share * len(ordered)) - 1
    return ordered[min(len(ordered) - 1, max(0, rank))]


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and the count of values, in milliseconds as given."""
    return {
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "count": float(len(values)),
    }


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def ratios_to_floors(rounds: Sequence[float], floors: Sequence[float]) -> list[float]:
    """Each round's value over the mean of the floor measured before it and the one after it.

    Rounds and floors alternate, floor first and last: floors has one more value than rounds.
    """
    if len(floors) != len(rounds) + 1:
        raise ValueError(f"{len(rounds)} rounds need {len(rounds) + 1} floors, got {len(floors)}")
    around = [mean([floors[n], floors[n + 1]]) for n in range(len(rounds))]
    return [
        value / floor if floor else math.nan for value, floor in zip(rounds, around, strict=True)
    ]


@dataclass(frozen=True)
class Target:
    """One figure's goal: the figure, how it compares, and what it is compared with."""

    figure: str
    text: str
    met: Callable[[Mapping[str, float | None]], bool | None]


def _bound(figure: str, compare: Callable[[float, float], bool], limit: float) -> Target:
    symbol = ">=" if compare is operator.ge else "<="

    def met(figures: Mapping[str, float | None]) -> bool | None:
        value = figures.get(figure)
        if value is None or math.isnan(value):
            return None
        return compare(value, limit)

    return Target(figure, f"{figure} {symbol} {limit:g}", met)


def _store_within_copy(figures: Mapping[str, float | None]) -> bool | None:
    store, copy = figures.get("store_p99_ms"), figures.get("copy_p99_ms")
    if store is None or copy is None or math.isnan(store) or math.isnan(copy):
        return None
    return store <= 3 * copy


TARGETS = (
    _bound("e2e_ratio", operator.ge, 0.6),
    _bound("cpu_ratio", operator.le, 2.0),
    _bound("receiver_ratio", operator.ge, 0.6),
    Target("store_p99_ms", "store_p99_ms <= 3 x copy_p99_ms", _store_within_copy),
    _bound("redis_bytes_per_image", operator.le, 2048),
    _bound("p99_growth", operator.le, 1.25),
)


def evaluate(figures: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Each target with its value and whether it was met (a missing figure misses its target)."""
    return [
        {
            "target": target.text,
            "figure": target.figure,
            "value": figures.get(target.figure),
            "met": target.met(figures) is True,
        }
        for target in TARGETS
    ]


def number(value: float | None, fmt: str = ".2f") -> str:
    """A figure as printed: nan when it was not measured."""
    if value is None or math.isnan(value):
        return "nan"
    return format(value, fmt)


def last_line(figures: Mapping[str, float | None]) -> str:
    """The line every run ends with, each figure in its own format."""
    parts = [f"{name}={number(figures.get(name), _FORMATS.get(name, '.2f'))}" for name in FIGURES]
    return "bench: " + " ".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table with columns as wide as their widest cell."""
    widths = [max(len(str(row[n])) for row in [header, *rows]) for n in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(widths[n]) for n, cell in enumerate(row)).rstrip()
        for row in [header, [""] * len(header), *rows]
    ]
    lines[1] = "  ".join("-" * w for w in widths)
    return "\n".join(lines)
