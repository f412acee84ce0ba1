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

from infra import servers, supervise
from pipeline.http import RetryOnDisconnectTransport

TERMINAL = {"succeeded", "partially_succeeded", "failed", "cancelled", "timed_out"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class PeakMemory(threading.Thread):
    """Samples the resident memory of process trees until stopped; keeps each tree's peak."""

    def __init__(self, services: dict[str, supervise.Service]) -> None:
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


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imagine-bench-"))
    logs = workdir / "logs"
    started: list[supervise.Service] = []
    try:
        redis_service = servers.start_redis(workdir / "redis", log_dir=logs)
        s3 = servers.start_s3(workdir / "s3", log_dir=logs)
        emulator = servers.start_emulator(
            workdir / "emulator", api_key="bench-key", log_dir=logs,
            extra_args=["--set", f"latency_min_ms={args.latency_ms // 2}",
                        "--set", f"latency_max_ms={args.latency_ms * 3 // 2}",
                        "--set", "render_workers=4"])
        started += [redis_service, s3, emulator]
        assert s3.url and redis_service.url and emulator.url
        servers.create_bucket(s3.url, "imagine-bench")
        receiver_port = supervise.free_port()
        env = servers.pipeline_env(
            redis_service.url, s3.url, "imagine-bench", emulator.url, "bench-key", receiver_port,
            extra={"RUNWARE_MAX_IN_FLIGHT": str(args.in_flight), "LOG_LEVEL": "WARNING"})
        receiver = servers.start_receiver(workdir, env, receiver_port, log_dir=logs)
        worker = servers.start_worker(workdir, env, "bench", concurrency=args.concurrency,
                                        log_dir=logs)
        beat = servers.start_beat(workdir / "beat", env, log_dir=logs)
        started += [receiver, worker, beat]
        memory = PeakMemory({"receiver": receiver, "worker": worker, "emulator": emulator})
        memory.start()
        api_key = servers.api_key_for(env)
        client = httpx.Client(base_url=f"http://127.0.0.1:{receiver_port}", timeout=30,
                              transport=RetryOnDisconnectTransport(),
                              headers={"Authorization": f"Bearer {api_key}"})
        jobs = max(1, args.images // args.per_job)
        submit_ms: list[float] = []
        created: dict[str, float] = {}
        began = time.monotonic()
        for n in range(jobs):
            t0 = time.monotonic()
            answer = client.post("/v1/jobs", json={
                "positivePrompt": f"benchmark image {n}", "width": 1280, "height": 896,
                "numberResults": args.per_job, "deadlineSeconds": 1800})
            answer.raise_for_status()
            submit_ms.append((time.monotonic() - t0) * 1000)
            created[answer.json()["id"]] = t0
        ended: dict[str, float] = {}
        states: dict[str, str] = {}
        deadline = time.monotonic() + args.timeout
        while len(ended) < len(created):
            if time.monotonic() > deadline:
                print(f"bench: timed out with {len(created) - len(ended)} jobs unfinished",
                      file=sys.stderr)
                return 1
            for job_id in [j for j in created if j not in ended]:
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in TERMINAL:
                    ended[job_id] = time.monotonic()
                    states[job_id] = job["state"]
            time.sleep(0.2)
        drain = time.monotonic() - began
        memory.halt.set()
        latencies = [ended[j] - created[j] for j in created]
        images = jobs * args.per_job
        ok = sum(1 for state in states.values() if state == "succeeded")
        print(f"bench: images={images} jobs={jobs} succeeded_jobs={ok} "
              f"provider_latency_ms~{args.latency_ms} in_flight={args.in_flight}")
        print(f"bench: POST /v1/jobs p50={statistics.median(submit_ms):.1f}ms "
              f"p95={percentile(submit_ms, 0.95):.1f}ms")
        print(f"bench: job end-to-end p50={statistics.median(latencies):.2f}s "
              f"p95={percentile(latencies, 0.95):.2f}s max={max(latencies):.2f}s")
        print("bench: peak RSS " + " ".join(
            f"{name}={peak / 2**20:.0f}MiB" for name, peak in memory.peaks.items()))
        print(f"bench: drain={drain:.1f}s throughput={images / drain:.2f} images/s")
        return 0 if ok == jobs else 1
    finally:
        supervise.stop_all(reversed(started))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.bench", description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-job", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=1500,
                        help="mean render latency of the emulator (uniform, +/-50%%)")
    parser.add_argument("--in-flight", type=int, default=16, help="RUNWARE_MAX_IN_FLIGHT")
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--workdir")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
