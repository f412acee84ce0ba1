"""The end-to-end, CPU and latency phases: the pipeline and its floor on one stack, interleaved."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.bench import cpu, latency, stats
from infra.bench.floorstack import Floor
from infra.bench.pipeline_run import api_client, post_paced, run_jobs, wait_for_jobs
from infra.emulator import catalog, render
from infra.stack import LocalStack, StackConfig
from pipeline.config import Settings
from pipeline.store import RedisJobStore

PIPELINE_OWN = ("receiver", "worker-bench", "beat")
FLOOR_OWN = ("floor-worker", "floor-receiver")
OTHERS = ("emulator", "s3", "redis")


def bench_config(args: argparse.Namespace, workdir: Path) -> StackConfig:
    """The stack of a benchmark: one worker, no Flower, the emulator without its render cost."""
    return StackConfig(
        workdir=workdir,
        bucket="imagine-bench",
        redis_aof=False,
        emulator_key="bench-key",
        emulator_args=(
            "--set", f"latency_ms={args.latency_ms}",
            "--set", "render_once=true",
        ),
        workers=("bench",),
        concurrency=args.concurrency,
        flower=False,
        extra_env={
            "RUNWARE_MAX_IN_FLIGHT": str(args.in_flight), "LOG_LEVEL": "WARNING",
            # Limits far above the load, so each request pays for its check but none is refused.
            "API_RATE_LIMIT": "100000/second", "TENANT_DAILY_IMAGES": "10000000",
            "TENANT_DAILY_SPEND_USD": "10000000", "GLOBAL_DAILY_SPEND_USD": "10000000",
        },
    )  # fmt: skip


@dataclass
class Rig:
    """The running stack with the floor beside it, and the bench's clients of both."""

    stack: LocalStack
    floor: Floor
    client: httpx.Client
    store: RedisJobStore
    per_job: int
    timeout: float
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def pids(self, names: tuple[str, ...]) -> dict[str, int | None]:
        services = {**self.stack.services, **self.floor.services}
        return {name: services[name].process.pid for name in names if name in services}

    def check(self) -> None:
        self.stack.check()
        self.floor.check()


def _cpu_ms_per_image(used: dict[str, float], own: tuple[str, ...], images: int) -> dict[str, Any]:
    per_image = {name: seconds * 1000 / images for name, seconds in used.items()}
    return {
        "own_ms": sum(per_image[name] for name in own if name in per_image),
        "others_ms": sum(per_image[name] for name in OTHERS if name in per_image),
        "by_process_ms": per_image,
    }


def _measured(rig: Rig, kind: str, own: tuple[str, ...], images: int, work: Any) -> dict[str, Any]:
    """Run work() -> (began, ended) between two CPU snapshots; the round's figures."""
    names = own + OTHERS
    before = cpu.snapshot(rig.pids(names))
    began, ended = work()
    used = cpu.used_between(before, cpu.snapshot(rig.pids(names)))
    rig.check()
    seconds = ended - began
    result = {
        "kind": kind,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "cpu": _cpu_ms_per_image(used, own, images),
    }
    rig.rounds.append(result)
    return result


def floor_round(rig: Rig, images: int) -> dict[str, Any]:
    return _measured(rig, "floor", FLOOR_OWN, images, lambda: rig.floor.run(images, rig.timeout))


def pipeline_round(rig: Rig, images: int) -> dict[str, Any]:
    def work() -> tuple[float, float]:
        done = run_jobs(rig.client, rig.store, images, rig.per_job, rig.timeout)
        return done.began, done.ended

    jobs = -(-images // rig.per_job)
    return _measured(rig, "pipeline", PIPELINE_OWN, jobs * rig.per_job, work)


def warm_up(rig: Rig, images: int) -> None:
    """Import, connect and fork everything once, outside any measured round."""
    rig.floor.run(images, rig.timeout)
    run_jobs(rig.client, rig.store, images, rig.per_job, rig.timeout)


def measure_e2e(rig: Rig, images: int, rounds: int, floor_images: int) -> dict[str, Any]:
    """floor, pipeline, floor, ... floor: each pipeline round against the floors around it."""
    per_round = max(rig.per_job, images // rounds)
    floors = [floor_round(rig, floor_images)]
    pipes = []
    for _ in range(rounds):
        pipes.append(pipeline_round(rig, per_round))
        floors.append(floor_round(rig, floor_images))
    speed = stats.ratios_to_floors(
        [p["images_per_s"] for p in pipes], [f["images_per_s"] for f in floors]
    )
    cost = stats.ratios_to_floors(
        [p["cpu"]["own_ms"] for p in pipes], [f["cpu"]["own_ms"] for f in floors]
    )
    return {
        "number_results_per_job": rig.per_job,
        "pipeline_images": sum(p["images"] for p in pipes),
        "pipeline_images_per_s": stats.mean([p["images_per_s"] for p in pipes]),
        "floor_images_per_s": stats.mean([f["images_per_s"] for f in floors]),
        "e2e_ratios": speed,
        "cpu_ratios": cost,
        "e2e_ratio": stats.mean(speed),
        "cpu_ratio": stats.mean(cost),
        "rounds": list(rig.rounds),
    }


def measure_latency(rig: Rig, images: int, images_per_s: float) -> dict[str, Any]:
    """Jobs POSTed at images_per_s, a paced S3 copy loop beside them; p50/p95/p99 of each."""
    stack = rig.stack
    data = render.reused_image(1024, 1024, "JPG", catalog.DEFAULT_QUALITY)
    copies = latency.CopyLoop(stack.s3_client(), stack.config.bucket, data,
                              min(50.0, max(5.0, images_per_s)))  # fmt: skip
    jobs = max(1, images // rig.per_job)

    def work() -> Any:
        began = time.time()
        ids = post_paced(rig.client, jobs, rig.per_job, images_per_s / rig.per_job)
        return wait_for_jobs(rig.store, ids, began, rig.timeout)

    done = latency.during(copies, work)
    store_ms, submit_ms = latency.slot_latencies(done.jobs)
    return {
        "images": done.images,
        "paced_images_per_s": images_per_s,
        "copy_per_s": 1 / copies.interval,
        **latency.summary(store_ms, submit_ms, copies.ms),
    }


def open_rig(args: argparse.Namespace, workdir: Path) -> Rig:
    """Start the stack, then the floor on its Redis and S3."""
    stack = LocalStack(bench_config(args, workdir))
    try:
        stack.start()
        floor = Floor(stack, args.concurrency)
        try:
            floor.start()
        except BaseException:
            floor.stop()
            raise
    except BaseException:
        stack.stop()
        raise
    client = api_client(stack.urls["RECEIVER_URL"], stack.api_key)
    store = RedisJobStore.from_settings(Settings.from_env(stack.env))
    return Rig(stack, floor, client, store, args.per_job, args.timeout)


def close_rig(rig: Rig) -> None:
    rig.client.close()
    rig.floor.stop()
    # The emulator first: its idle keep-alive connections would hold the receiver's graceful
    # stop for gunicorn's whole graceful_timeout.
    emulator = rig.stack.services.get("emulator")
    if emulator is not None:
        emulator.stop(10)
    rig.stack.stop()
