"""Growth phase: Redis bytes per in-flight image, and the receiver's p99 at 100 and at 10,000.

Images are put in flight through the pipeline's own use cases in this process (see
`receiver.seed_in_flight`): sent to the emulator, which holds them, awaiting their results.
Redis's used_memory is read just before and just after the bulk of them is sent. wrk plays the
same request mix at each size: the duplicate webhook of a stored image, with one first result
of an image in flight every Nth request. The CPU's speed drifts, so each wrk round sits between
two hello-world rounds and the p99 growth is corrected by the hello rates around each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from infra.bench.receiver import (
    Bench,
    BenchError,
    WrkLoad,
    WrkRequest,
    WrkRound,
    awaiting_tasks,
    bench_config,
    duplicate_webhook,
    ensure_wrk,
    fresh_results,
    hold_deliveries,
    run_wrk,
    running_bench,
    say,
    seed_in_flight,
    write_requests,
)

SEEDED_HOW = (
    "in-process: JobService.create_job (validation, job and slot records) then "
    "JobService.submit_job (taskUUIDs, leases, presigned upload URLs, one imageInference "
    "request of up to 20 tasks to the emulator, which holds them; slots submitted) - the API's "
    "and the submit task's use cases without the Celery hop"
)


@dataclass(frozen=True)
class Mix:
    """The request mix of a growth round: the duplicate, one fresh result every `every`."""

    duplicate: Path
    fresh: Path
    every: int


def used_memory(bench: Bench) -> int:
    """Redis's used_memory now."""
    client = redis.Redis.from_url(bench.stack.env["REDIS_URL"])
    try:
        info: dict[str, Any] = client.info("memory")
    finally:
        client.close()
    return int(info["used_memory"])


def in_flight(bench: Bench) -> int:
    """Images holding an in-flight lease under the stack's Runware key."""
    return bench.service.context.budget.in_use()


def bytes_per_image(before: int, after: int, images: int) -> float:
    """Redis memory added per image put in flight."""
    if images <= 0:
        raise ValueError("no image was added")
    return (after - before) / images


def corrected_growth(
    low: WrkRound, high: WrkRound, hello_low: Sequence[WrkRound], hello_high: Sequence[WrkRound]
) -> float:
    """p99 high over p99 low, each scaled by the hello rate around it: a CPU twice as slow
    doubles a latency and halves the hello rate, so their product does not move."""
    speed_low = statistics.fmean(r.rps for r in hello_low)
    speed_high = statistics.fmean(r.rps for r in hello_high)
    return (high.p99_ms * speed_high) / (low.p99_ms * speed_low)


def stage_mix(
    bench: Bench, directory: Path, name: str, job_ids: list[str], duplicate: WrkRequest,
    image: bytes, sample: int, every: int,
) -> Mix:  # fmt: skip
    """Stage `sample` fresh results of the jobs' images for a round's mix."""
    template = json.loads(duplicate.body)["data"][0]
    fresh = fresh_results(bench, awaiting_tasks(bench, job_ids)[:sample], template, image)
    return Mix(
        duplicate=write_requests(directory / "duplicate.txt", [duplicate]),
        fresh=write_requests(directory / f"fresh-{name}.txt", fresh),
        every=every,
    )


def mixed_rounds(
    bench: Bench, mix: Mix, name: str, seconds: float, load: WrkLoad
) -> tuple[WrkRound, list[WrkRound]]:
    """hello, the mix against the receiver, hello."""
    hello = [run_wrk("hello", bench.hello_url, mix.duplicate, seconds, load)]
    measured = run_wrk(
        name, bench.receiver_url, mix.duplicate, seconds, load, (mix.fresh, mix.every)
    )
    hello.append(run_wrk("hello", bench.hello_url, mix.duplicate, seconds, load))
    return measured, hello


@dataclass(frozen=True)
class GrowthPlan:
    """Sizes of the phase."""

    in_flight: int = 10_000
    low: int = 100
    sample: int = 50  # fresh results in each round's mix
    every: int = 10  # one request in `every` is a fresh result while the sample lasts
    seconds: float = 5.0


def measure_growth(
    workdir: Path,
    *,
    in_flight: int = 10_000,
    seconds: float = 5.0,
    load: WrkLoad | None = None,
) -> dict[str, Any]:
    """The growth phase on a stack of its own in workdir."""
    plan = GrowthPlan(in_flight=in_flight, seconds=seconds)
    load = load or WrkLoad()
    ensure_wrk()
    began = time.monotonic()
    # The emulator holds every task by design: the reconciler must not poll them meanwhile.
    config = bench_config(
        workdir, max_in_flight=plan.in_flight + plan.low + 100, reconcile_grace_seconds=3600
    )
    with running_bench(config) as bench:
        figures = grow(bench, workdir, plan, load)
    figures["phase_seconds"] = round(time.monotonic() - began, 1)
    return figures


def grow(bench: Bench, workdir: Path, plan: GrowthPlan, load: WrkLoad) -> dict[str, Any]:
    duplicate, image = duplicate_webhook(bench)
    hold_deliveries(bench)
    low_jobs = seed_in_flight(bench, plan.low)
    low_mix = stage_mix(bench, workdir, "low", low_jobs, duplicate, image, plan.sample, plan.every)
    at_low = in_flight(bench)
    low, hello_low = mixed_rounds(bench, low_mix, "mix-low", plan.seconds, load)
    before = used_memory(bench)
    seeded = time.monotonic()
    added = plan.in_flight - in_flight(bench)
    high_jobs = seed_in_flight(bench, added)
    seed_seconds = time.monotonic() - seeded
    after = used_memory(bench)
    say(f"{added} images put in flight in {seed_seconds:.1f}s")
    high_mix = stage_mix(
        bench, workdir, "high", high_jobs, duplicate, image, plan.sample, plan.every
    )
    at_high = in_flight(bench)
    high, hello_high = mixed_rounds(bench, high_mix, "mix-high", plan.seconds, load)
    return {
        "redis_bytes_per_image": round(bytes_per_image(before, after, added)),
        "p99_low_ms": low.p99_ms,
        "p99_high_ms": high.p99_ms,
        "p99_growth": round(corrected_growth(low, high, hello_low, hello_high), 3),
        "p99_growth_raw": round(high.p99_ms / low.p99_ms, 3),
        "in_flight_low": at_low,
        "in_flight_high": at_high,
        "redis_used_memory_before": before,
        "redis_used_memory_after": after,
        "images_added": added,
        "seed_seconds": round(seed_seconds, 1),
        "seeded_how": SEEDED_HOW,
        "mix": f"the duplicate webhook, one of {plan.sample} fresh results every {plan.every}",
        "wrk": {"threads": load.threads, "connections": load.connections, "seconds": plan.seconds},
        "rounds": [
            r.figures()
            for r in (hello_low[0], low, hello_low[1], hello_high[0], high, hello_high[1])
        ],
    }


def summary_line(figures: dict[str, Any]) -> str:
    return (
        f"growth: redis_bytes_per_image={figures['redis_bytes_per_image']} "
        f"p99_low_ms={figures['p99_low_ms']} p99_high_ms={figures['p99_high_ms']} "
        f"p99_growth={figures['p99_growth']} (raw {figures['p99_growth_raw']})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.bench.growth", description=__doc__)
    parser.add_argument("--in-flight", type=int, default=10_000, help="images in flight at high")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk round")
    parser.add_argument("--threads", type=int, default=WrkLoad.threads, help="wrk threads")
    parser.add_argument("--connections", type=int, default=WrkLoad.connections)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imagine-bench-growth-"))
    try:
        figures = measure_growth(
            workdir, in_flight=args.in_flight, seconds=args.seconds,
            load=WrkLoad(threads=args.threads, connections=args.connections),
        )  # fmt: skip
    except BenchError as exc:
        print(f"bench: growth phase failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2))
    print(summary_line(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
