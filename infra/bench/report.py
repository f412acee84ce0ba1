"""bench.json and the printed table: every round, every phase, every target met or MISSED."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from infra.bench import stats

# Where each figure of the last line comes from: (phase, key in that phase's result).
SOURCES = {
    "e2e_ratio": ("e2e", "e2e_ratio"),
    "cpu_ratio": ("e2e", "cpu_ratio"),
    "receiver_ratio": ("receiver", "receiver_ratio"),
    "store_p99_ms": ("latency", "store_p99_ms"),
    "copy_p99_ms": ("latency", "copy_p99_ms"),
    "redis_bytes_per_image": ("growth", "redis_bytes_per_image"),
    "p99_growth": ("growth", "p99_growth"),
}


def _figure(results: Mapping[str, Any], phase: str, key: str) -> float | None:
    value = results.get(phase, {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def figures_of(results: Mapping[str, Any]) -> dict[str, float | None]:
    return {name: _figure(results, *source) for name, source in SOURCES.items()}


def document(
    settings: Mapping[str, Any], results: Mapping[str, Any], failures: list[str]
) -> dict[str, Any]:
    """What bench.json holds: settings, each phase's result, the figures and the targets."""
    figures = figures_of(results)
    return {
        "settings": dict(settings),
        **results,
        "figures": figures,
        "targets": stats.evaluate(figures),
        "failures": failures,
        "ok": not failures,
    }


def _round_rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for n, item in enumerate(rounds):
        by_process = item["cpu"]["by_process_ms"]
        rows.append(
            [
                str(n + 1),
                item["kind"],
                str(item["images"]),
                f"{item['seconds']:.1f}",
                f"{item['images_per_s']:.1f}",
                f"{item['cpu']['own_ms']:.1f}",
                *(f"{by_process.get(name, 0.0):.1f}" for name in ("emulator", "s3", "redis")),
            ]
        )
    return rows


def render_e2e(e2e: Mapping[str, Any]) -> list[str]:
    header = ["round", "kind", "images", "s", "images/s", "own CPU ms/img",
              "emulator", "s3", "redis"]  # fmt: skip
    lines = [
        f"end to end: 1024x1024 JPEG, numberResults={e2e['number_results_per_job']} per job, "
        "POST /v1/jobs to the last job's terminal state (manifest written); "
        "CPU ms per image of the pipeline's own processes (receiver, worker, beat) or the "
        "floor's (worker, handler), then of the shared servers",
        stats.table(header, _round_rows(e2e["rounds"])),
        "each pipeline round / mean of the floors around it: images/s "
        + ", ".join(stats.number(r) for r in e2e["e2e_ratios"])
        + "; own CPU per image "
        + ", ".join(stats.number(r) for r in e2e["cpu_ratios"]),
        "the floor per image: one Celery message, one S3 PUT, one webhook POST to a hello-world "
        "handler, one S3 copy, one Redis INCR to count it",
    ]
    return lines


def render_latency(result: Mapping[str, Any]) -> list[str]:
    header = ["latency (ms)", "p50", "p95", "p99", "count"]
    rows = []
    for name in ("received_to_stored_ms", "enqueue_to_sent_ms", "s3_copy_ms"):
        spread = result[name]
        rows.append([name, *(stats.number(spread[k], ".1f") for k in ("p50", "p95", "p99")),
                     f"{spread['count']:.0f}"])  # fmt: skip
    return [
        f"latency: {result['images']} images paced at {result['paced_images_per_s']:.1f}/s "
        f"(half the pipeline's), S3 CopyObject of the same size at {result['copy_per_s']:.1f}/s",
        stats.table(header, rows),
    ]


def render_other(name: str, result: Mapping[str, Any]) -> list[str]:
    numbers = {
        key: value
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    text = " ".join(f"{key}={stats.number(float(value))}" for key, value in numbers.items())
    return [f"{name}: {text}"]


def _value_text(target: Mapping[str, Any], figures: Mapping[str, float | None]) -> str:
    text = stats.number(target["value"], ".1f" if target["figure"].endswith("_ms") else ".2f")
    if target["figure"] == "store_p99_ms":
        copy = figures.get("copy_p99_ms")
        text += f" vs 3 x {stats.number(copy, '.1f')}"
    return text


def _result(target: Mapping[str, Any]) -> str:
    if target["met"]:
        return "met"
    return "MISSED" if target["value"] is not None else "MISSED (not measured)"


def render_targets(doc: Mapping[str, Any]) -> list[str]:
    rows = [[t["target"], _value_text(t, doc["figures"]), _result(t)] for t in doc["targets"]]
    return [stats.table(["target", "value", "result"], rows)]


def render(doc: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for phase in ("e2e", "latency", "receiver", "growth"):
        result = doc.get(phase)
        if result is None:
            continue
        lines.append("")
        status = result.get("status", "ok")
        if status != "ok":
            lines.append(f"{phase}: {status.upper()}: {result.get('error', '')}")
        elif phase == "e2e":
            lines += render_e2e(result)
        elif phase == "latency":
            lines += render_latency(result)
        else:
            lines += render_other(phase, result)
    lines += ["", *render_targets(doc)]
    lines += [f"FAILED: {failure}" for failure in doc["failures"]]
    return "\n".join(lines)
