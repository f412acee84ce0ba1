"""The benchmark's arithmetic: percentiles, ratios to the floors around a round, targets."""

from __future__ import annotations

import math
import re

import pytest

from infra.bench import cpu, report, stats

pytestmark = pytest.mark.unit

LAST_LINE = re.compile(
    r"bench: e2e_ratio=\S+ cpu_ratio=\S+ receiver_ratio=\S+ store_p99_ms=\S+ copy_p99_ms=\S+ "
    r"redis_bytes_per_image=\S+ p99_growth=\S+"
)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert stats.percentile(values, 0.5) == 50
    assert stats.percentile(values, 0.99) == 99
    assert stats.percentile([7.0], 0.99) == 7
    assert math.isnan(stats.percentile([], 0.5))


def test_each_round_is_compared_with_the_mean_of_the_floors_around_it() -> None:
    assert stats.ratios_to_floors([30.0, 20.0], [50.0, 70.0, 30.0]) == [0.5, 0.4]
    with pytest.raises(ValueError, match="2 rounds need 3 floors"):
        stats.ratios_to_floors([1.0, 2.0], [1.0, 2.0])


def test_targets_met_missed_and_missing() -> None:
    figures: dict[str, float | None] = {
        "e2e_ratio": 0.6,
        "cpu_ratio": 2.5,
        "receiver_ratio": None,
        "store_p99_ms": 30.0,
        "copy_p99_ms": 10.0,
        "redis_bytes_per_image": 2049.0,
        "p99_growth": math.nan,
    }
    met = {t["figure"]: t["met"] for t in stats.evaluate(figures)}
    assert met == {
        "e2e_ratio": True,
        "cpu_ratio": False,
        "receiver_ratio": False,
        "store_p99_ms": True,
        "redis_bytes_per_image": False,
        "p99_growth": False,
    }


def test_last_line_format() -> None:
    figures = dict.fromkeys(stats.FIGURES, 1.23456)
    figures["p99_growth"] = None
    line = stats.last_line(figures)
    assert LAST_LINE.fullmatch(line)
    assert "store_p99_ms=1.2 " in line
    assert "redis_bytes_per_image=1 " in line
    assert line.endswith("p99_growth=nan")


def test_figures_come_from_their_phases_and_a_missing_phase_gives_none() -> None:
    results = {
        "e2e": {"e2e_ratio": 0.7, "cpu_ratio": 1.5},
        "receiver": {"status": "missing"},
        "latency": {"store_p99_ms": 12.0, "copy_p99_ms": float("nan")},
    }
    figures = report.figures_of(results)
    assert figures["e2e_ratio"] == 0.7
    assert figures["receiver_ratio"] is None
    assert figures["copy_p99_ms"] is None
    doc = report.document({}, {"receiver": {"status": "missing", "error": "not there"}}, [])
    text = report.render(doc)
    assert "receiver: MISSING: not there" in text
    assert text.count("MISSED") == len(stats.TARGETS)


def test_cpu_between_counts_processes_born_since_whole() -> None:
    assert cpu.cpu_between({1: 2.0, 2: 1.0}, {1: 3.5, 3: 0.25}) == 1.75
