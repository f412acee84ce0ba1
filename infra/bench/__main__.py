"""Throughput benchmark: images through the whole local stack, with the provider's latency."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from infra.stack import LocalStack, StackConfig
from infra.supervise import Service
from pipeline.http import RetryOnDisconnectTransport
from pipeline.models import JOB_TERMINAL, JobState


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class PeakMemory(threading.Thread):
    """Samples the resident memory of process trees until stopped; keeps each tree's peak."""

    def __init__(self, services: dict[str, Service]) -> None:
        super().__init__(daemon=True)
        self.services = services
        self.peaks: dict[str, int] = dict.fromkeys(services, 0)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.25):
            for name, service in self.services.items():
                pid = service.process.pid
                if pid is None:
                    continue
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                    rss = sum(p.memory_info().rss for p in tree if p.is_running())
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks[name], rss)


def bench_config(args: argparse.Namespace, workdir: Path) -> StackConfig:
    """The local stack of a benchmark: one worker, the emulator at the provider's latency."""
    latency = args.latency_ms
    return StackConfig(
        workdir=workdir,
        bucket="imagine-bench",
        redis_aof=False,
        emulator_key="bench-key",
        emulator_args=(
            "--set", f"latency_min_ms={latency // 2}",
            "--set", f"latency_max_ms={latency * 3 // 2}",
            "--set", "render_workers=4",
        ),
        workers=("bench",),
        concurrency=args.concurrency,
        flower=False,
        extra_env={"RUNWARE_MAX_IN_FLIGHT": str(args.in_flight), "LOG_LEVEL": "WARNING"},
    )  # fmt: skip


def submit_jobs(
    client: httpx.Client, jobs: int, per_job: int
) -> tuple[dict[str, float], list[float]]:
    """POST the jobs; when each was created, and how long each POST took (ms)."""
    submit_ms: list[float] = []
    created: dict[str, float] = {}
    for n in range(jobs):
        t0 = time.monotonic()
        answer = client.post("/v1/jobs", json={
            "positivePrompt": f"benchmark image {n}", "width": 1280, "height": 896,
            "numberResults": per_job, "deadlineSeconds": 1800})  # fmt: skip
        answer.raise_for_status()
        submit_ms.append((time.monotonic() - t0) * 1000)
        created[answer.json()["id"]] = t0
    return created, submit_ms


def wait_for_jobs(
    client: httpx.Client, created: dict[str, float], timeout: float
) -> tuple[dict[str, float], dict[str, str]] | None:
    """When each job ended and in what state; None if some did not end within timeout."""
    ended: dict[str, float] = {}
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(created):
        if time.monotonic() > deadline:
            print(f"bench: timed out with {len(created) - len(ended)} jobs unfinished",
                  file=sys.stderr)  # fmt: skip
            return None
        for job_id in [j for j in created if j not in ended]:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in JOB_TERMINAL:
                ended[job_id] = time.monotonic()
                states[job_id] = job["state"]
        time.sleep(0.2)
    return ended, states


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imagine-bench-"))
    stack = LocalStack(bench_config(args, workdir))
    try:
        stack.start()
        services = stack.services
        memory = PeakMemory({"receiver": services["receiver"],
                             "worker": services["worker-bench"],
                             "emulator": services["emulator"]})  # fmt: skip
        memory.start()
        client = httpx.Client(base_url=stack.urls["RECEIVER_URL"], timeout=30,
                              transport=RetryOnDisconnectTransport(),
                              headers={"Authorization": f"Bearer {stack.api_key}"})  # fmt: skip
        jobs = max(1, args.images // args.per_job)
        began = time.monotonic()
        created, submit_ms = submit_jobs(client, jobs, args.per_job)
        outcome = wait_for_jobs(client, created, args.timeout)
        if outcome is None:
            return 1
        ended, states = outcome
        drain = time.monotonic() - began
        memory.halt.set()
        latencies = [ended[j] - created[j] for j in created]
        images = jobs * args.per_job
        ok = sum(1 for state in states.values() if state == JobState.SUCCEEDED)
        print(
            f"bench: images={images} jobs={jobs} succeeded_jobs={ok} "
            f"provider_latency_ms~{args.latency_ms} in_flight={args.in_flight}"
        )
        print(
            f"bench: POST /v1/jobs p50={statistics.median(submit_ms):.1f}ms "
            f"p95={percentile(submit_ms, 0.95):.1f}ms"
        )
        print(
            f"bench: job end-to-end p50={statistics.median(latencies):.2f}s "
            f"p95={percentile(latencies, 0.95):.2f}s max={max(latencies):.2f}s"
        )
        print(
            "bench: peak RSS "
            + " ".join(f"{name}={peak / 2**20:.0f}MiB" for name, peak in memory.peaks.items())
        )
        print(f"bench: drain={drain:.1f}s throughput={images / drain:.2f} images/s")
        return 0 if ok == jobs else 1
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.bench", description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-job", type=int, default=4)
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=1500,
        help="mean render latency of the emulator (uniform, +/-50%%)",
    )
    parser.add_argument("--in-flight", type=int, default=16, help="RUNWARE_MAX_IN_FLIGHT")
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--workdir")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
