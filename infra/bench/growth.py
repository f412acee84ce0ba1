"""Growth phase: Redis bytes per in-flight image, and the receiver's p99 at 100 and at 10,000.

Images are put in flight through the pipeline's own use cases in this process (see
`receiver.seed_in_flight`): sent to the emulator, which holds them, awaiting their results.
Redis's used_memory is read just before and just after the bulk of them is sent. wrk plays the
same request mix at each size: the duplicate webhook of a stored image, with one first result
of an image in flight every Nth request. The CPU's speed drifts, so each wrk round sits between
two hello-world rounds and the p99 growth is corrected by the hello rates around each. wrk
keeps two connections open, below saturation, so the p99 is a service time, not a queue's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from infra.bench.receiver import (
    Bench,
    WrkLoad,
    WrkRequest,
    WrkRound,
    awaiting_tasks,
    bench_config,
    calls_per_request,
    cores_busy,
    cpu_ms_per_request,
    cpu_seconds,
    duplicate_webhook,
    ensure_wrk,
    fresh_results,
    hold_deliveries,
    redis_calls,
    run_alone,
    run_wrk,
    running_bench,
    say,
    seed_in_flight,
    write_requests,
)
from pipeline.store import RedisJobStore

LATENCY_CONNECTIONS = 2
WARM_UP_SECONDS = 2.0
SEEDED_HOW = (
    "in the benchmark's own process (4 threads), not through the API and the workers: "
    "JobService.create_job (validation, job and slot records) then JobService.submit_job "
    "(taskUUIDs, leases, presigned upload URLs, one imageInference request of up to 20 tasks to "
    "the emulator, which holds them; slots submitted) - the use cases the API and the submit "
    "task run, without the Celery hop"
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


def memory_by_kind(bench: Bench, job_id: str) -> dict[str, float]:
    """Redis bytes per in-flight image by record (MEMORY USAGE): the job's hash and its index
    entries shared by its images, each image's slot hash and taskUUID index key, its lease."""
    store = bench.service.store
    if not isinstance(store, RedisJobStore) or store.leases_key is None:
        return {}
    job = store.get_job(job_id)
    if job is None or not job.slots:
        return {}
    images = len(job.slots)
    client = store.redis

    def usage(key: str) -> int:
        return int(client.memory_usage(key, samples=0) or 0)

    def per_member(key: str) -> float:
        members = int(client.zcard(key)) or 1
        return usage(key) / members

    slots = [store.slot_key(job_id, slot.slot) for slot in job.slots]
    tasks = [store.task_key(slot.task_uuid) for slot in job.slots if slot.task_uuid]
    kinds = {
        "job_hash_share": usage(store.job_key(job_id)) / images,
        "slot_hash": statistics.fmean(usage(key) for key in slots),
        "task_index_key": statistics.fmean(usage(key) for key in tasks) if tasks else 0.0,
        "lease_member": per_member(store.leases_key),
        "job_index_share": (per_member(store.active_key) + per_member(store.tenant_key(job.tenant)))
        / images,
    }
    return {name: round(value, 1) for name, value in kinds.items()}


def in_flight(bench: Bench) -> int:
    """Images holding an in-flight lease under the stack's Runware key."""
    return bench.service.context.budget.in_use()


def bytes_per_image(before: int, after: int, images: int) -> float:
    """Redis memory added per image put in flight."""
    if images <= 0:
        raise ValueError("no image was added")
    return (after - before) / images


@dataclass(frozen=True)
class GrowthPlan:
    """Sizes of the phase."""

    in_flight: int = 10_000
    low: int = 100
    sample: int = 40  # fresh results staged for each mix round
    every: int = 20  # one request in `every` is a fresh result while the sample lasts
    rounds: int = 2  # mix rounds at each size
    seconds: float = 4.0

    @property
    def consumed(self) -> int:
        """Images the mix rounds at one size take out of flight."""
        return self.sample * self.rounds


@dataclass
class Level:
    """The wrk rounds at one in-flight size: hello, mix, hello, mix, hello."""

    name: str
    in_flight: tuple[int, int]  # at the first and after the last round
    hello: list[WrkRound] = field(default_factory=list)
    mixes: list[WrkRound] = field(default_factory=list)
    redis_per_request: dict[str, float] = field(default_factory=dict)  # of its first mix
    cores: dict[str, float] = field(default_factory=dict)  # each process, during its first mix
    cpu_ms: dict[str, float] = field(default_factory=dict)  # each process's, per request of it

    @property
    def p99_ms(self) -> float:
        return statistics.fmean(r.p99_ms for r in self.mixes)

    @property
    def scaled_p99(self) -> float:
        """Each mix's p99 times the mean hello rate around it: a CPU twice as slow doubles
        a latency and halves the hello rate, so the product does not move."""
        speeds = [(a.rps + b.rps) / 2 for a, b in zip(self.hello, self.hello[1:], strict=False)]
        return statistics.fmean(
            r.p99_ms * speed for r, speed in zip(self.mixes, speeds, strict=True)
        )

    def rounds(self) -> list[WrkRound]:
        """In the order they ran."""
        ordered = [self.hello[0]]
        for mix, hello in zip(self.mixes, self.hello[1:], strict=True):
            ordered += [mix, hello]
        return ordered


def stack_cpu_growth(low: Level, high: Level) -> float | None:
    """The stack's CPU per request of the mix (the floor left out) at the top over the bottom:
    what the work beside each request (a scan, a bigger structure) adds as images pile up."""
    low_ms = sum(ms for name, ms in low.cpu_ms.items() if name != "hello")
    high_ms = sum(ms for name, ms in high.cpu_ms.items() if name != "hello")
    return round(high_ms / low_ms, 3) if low_ms else None


def p99_growth(low: Level, high: Level) -> float:
    """The p99 at the top over the p99 at the bottom, corrected for the CPU's drift."""
    return high.scaled_p99 / low.scaled_p99


def stage_mixes(
    bench: Bench, directory: Path, name: str, job_ids: list[str], duplicate: WrkRequest,
    image: bytes, plan: GrowthPlan,
) -> list[Mix]:  # fmt: skip
    """For each mix round, `plan.sample` fresh results of the jobs' images, staged."""
    template = json.loads(duplicate.body)["data"][0]
    tasks = awaiting_tasks(bench, job_ids)
    repeated = write_requests(directory / "duplicate.txt", [duplicate])
    mixes = []
    for n in range(plan.rounds):
        sample = tasks[n * plan.sample : (n + 1) * plan.sample]
        fresh = fresh_results(bench, sample, template, image)
        listed = write_requests(directory / f"fresh-{name}-{n}.txt", fresh)
        mixes.append(Mix(duplicate=repeated, fresh=listed, every=plan.every))
    return mixes


def warm_up(bench: Bench, duplicate: Path, load: WrkLoad) -> None:
    """A round of each endpoint, not counted: the first requests of a fresh stack pay for
    imports, connection pools and caches that the bottom's rounds must not carry."""
    run_wrk("warm-up", bench.hello_url, duplicate, WARM_UP_SECONDS, load)
    run_wrk("warm-up", bench.receiver_url, duplicate, WARM_UP_SECONDS, load)


def measure_level(
    bench: Bench, name: str, mixes: list[Mix], seconds: float, load: WrkLoad
) -> Level:
    """hello, mix, hello, mix, ..., hello; the Redis calls per request of the first mix, and
    the cores each process of the stack kept busy during the first mix."""
    level = Level(name, (in_flight(bench), 0))
    level.hello.append(run_wrk("hello", bench.hello_url, mixes[0].duplicate, seconds, load))
    for mix in mixes:
        calls, cpu = redis_calls(bench), cpu_seconds(bench)
        measured = run_wrk(
            name, bench.receiver_url, mix.duplicate, seconds, load, (mix.fresh, mix.every)
        )
        if not level.redis_per_request:
            level.redis_per_request = calls_per_request(
                calls, redis_calls(bench), measured.requests
            )
            after = cpu_seconds(bench)
            level.cores = cores_busy(cpu, after, measured.seconds)
            level.cpu_ms = cpu_ms_per_request(cpu, after, measured.requests)
        level.mixes.append(measured)
        level.hello.append(run_wrk("hello", bench.hello_url, mix.duplicate, seconds, load))
    level.in_flight = (level.in_flight[0], in_flight(bench))
    return level


def measure_growth(
    workdir: Path,
    *,
    in_flight: int = 10_000,
    seconds: float = 4.0,
    load: WrkLoad | None = None,
) -> dict[str, Any]:
    """The growth phase on a stack of its own in workdir."""
    plan = GrowthPlan(in_flight=in_flight, seconds=seconds)
    # A saturating load measures queueing, not the receiver: a p99 under it swings with the
    # machine's speed. Two connections (one per gunicorn worker) keep it a service time.
    load = load or WrkLoad(connections=LATENCY_CONNECTIONS)
    ensure_wrk()
    began = time.monotonic()
    # The emulator holds every task by design: the reconciler must not poll them meanwhile.
    budget = plan.in_flight + plan.low + 2 * plan.consumed + 100
    config = bench_config(workdir, max_in_flight=budget, reconcile_grace_seconds=3600)
    with running_bench(config) as bench:
        figures = grow(bench, workdir, plan, load)
    figures["phase_seconds"] = round(time.monotonic() - began, 1)
    return figures


def grow(bench: Bench, workdir: Path, plan: GrowthPlan, load: WrkLoad) -> dict[str, Any]:
    """Measure at the bottom, put the top's images in flight, measure at the top."""
    duplicate, image = duplicate_webhook(bench)
    hold_deliveries(bench)
    # The mix rounds store some images: each size starts that many above its mark.
    low_jobs = seed_in_flight(bench, plan.low + plan.consumed)
    low_mixes = stage_mixes(bench, workdir, "low", low_jobs, duplicate, image, plan)
    warm_up(bench, low_mixes[0].duplicate, load)
    low = measure_level(bench, "mix-low", low_mixes, plan.seconds, load)
    before = used_memory(bench)
    seeded = time.monotonic()
    added = plan.in_flight + plan.consumed - in_flight(bench)
    high_jobs = seed_in_flight(bench, added)
    seed_seconds = time.monotonic() - seeded
    after = used_memory(bench)
    say(f"{added} images put in flight in {seed_seconds:.1f}s")
    high_mixes = stage_mixes(bench, workdir, "high", high_jobs, duplicate, image, plan)
    high = measure_level(bench, "mix-high", high_mixes, plan.seconds, load)
    return {
        "redis_bytes_per_image": round(bytes_per_image(before, after, added)),
        "p99_low_ms": round(low.p99_ms, 2),
        "p99_high_ms": round(high.p99_ms, 2),
        "p99_growth": round(p99_growth(low, high), 3),
        "p99_growth_raw": round(high.p99_ms / low.p99_ms, 3),
        "in_flight_low": list(low.in_flight),
        "in_flight_high": list(high.in_flight),
        "redis_used_memory_before": before,
        "redis_used_memory_after": after,
        "redis_bytes_by_record": memory_by_kind(bench, high_jobs[len(high_jobs) // 2]),
        "images_added": added,
        "seed_seconds": round(seed_seconds, 1),
        "seeded_how": SEEDED_HOW,
        "redis_calls_per_request": {"low": low.redis_per_request, "high": high.redis_per_request},
        "cores_busy": {"low": low.cores, "high": high.cores},
        "cpu_ms_per_request": {"low": low.cpu_ms, "high": high.cpu_ms},
        "stack_cpu_growth": stack_cpu_growth(low, high),
        "mix": f"the duplicate webhook; one request in {plan.every} a fresh result "
        f"(of {plan.sample} per round)",
        "wrk": {"threads": load.threads, "connections": load.connections, "seconds": plan.seconds},
        "rounds": [r.figures() for r in low.rounds() + high.rounds()],
    }


def summary_line(figures: dict[str, Any]) -> str:
    return (
        f"growth: redis_bytes_per_image={figures['redis_bytes_per_image']} "
        f"p99_low_ms={figures['p99_low_ms']} p99_high_ms={figures['p99_high_ms']} "
        f"p99_growth={figures['p99_growth']} (raw {figures['p99_growth_raw']}) "
        f"stack_cpu_growth={figures['stack_cpu_growth']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.bench.growth", description=__doc__)
    parser.add_argument("--in-flight", type=int, default=10_000, help="images in flight at high")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each wrk round")
    parser.add_argument("--threads", type=int, default=WrkLoad.threads, help="wrk threads")
    parser.add_argument("--connections", type=int, default=LATENCY_CONNECTIONS)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    load = WrkLoad(threads=args.threads, connections=args.connections)
    return run_alone("growth", args.workdir, summary_line, lambda workdir: measure_growth(
        workdir, in_flight=args.in_flight, seconds=args.seconds, load=load))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
