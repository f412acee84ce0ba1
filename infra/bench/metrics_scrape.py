"""How long the receiver's /metrics takes to render, with no job and with many in Redis.

    .venv/bin/python -m infra.bench.metrics_scrape [--jobs 10000] [--scrapes 200]

Starts a Redis server of its own, fills it with active jobs (4 images each, some of them with
in-flight leases, waiting for the budget, dead-lettered, overdue), and times GET /metrics
through the Flask test client, the Celery broker's queue lengths included (the broker is the
same Redis). Run it with PROMETHEUS_MULTIPROC_DIR set to an empty directory to time the
multiprocess merge as the receiver does it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from infra import servers
from pipeline import metrics
from pipeline.config import Settings
from pipeline.models import Job, JobState
from pipeline.services import JobService
from pipeline.wiring import build_service
from webhooks.app import create_app

BENCH_KEY = "bench-runware-key"


def fill(service: JobService, jobs: int, now: float) -> None:
    """`jobs` active jobs written as the pipeline writes them; a few in each waiting state."""
    store, budget = service.context.store, service.context.budget
    for n in range(jobs):
        job = Job(
            id=str(uuid.uuid4()),
            tenant=f"tenant-{n % 5}",
            state=JobState.QUEUED,
            model=service.settings.runware_model,
            params={"positivePrompt": "a lighthouse", "width": 1024, "height": 1024},
            slot_count=4,
            output_format="JPG",
            created_at=now,
            updated_at=now,
            # One job in a hundred is past its deadline: the stuck gauge has something to count.
            deadline_at=now - 3600 if n % 100 == 0 else now + 900,
        )
        store.create_job(job, body_hash="bench")
        if n % 50 == 0:
            budget.wait(job.id)
        if n % 200 == 0:
            store.dead_letter(job.id, 0, "timeoutProvider", "bench")
    store.redis.zadd(
        budget.leases_key,
        {f"lease-{n}": now + 600 for n in range(service.settings.runware_max_in_flight)},
    )


def time_scrapes(service: JobService, settings: Settings, scrapes: int) -> list[float]:
    app = create_app(settings, service=service, inline_service=service, roles=["metrics"])
    http = app.test_client()
    http.get("/metrics")  # builds the registry once
    took = []
    for _ in range(scrapes):
        started = time.perf_counter()
        answer = http.get("/metrics")
        took.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"/metrics answered {answer.status_code}: {answer.text[:500]}")
    return took


def report(label: str, took: list[float]) -> None:
    ms = sorted(t * 1000 for t in took)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print(
        f"{label:>14}: median {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms, "
        f"min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms over {len(ms)} scrapes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metrics-scrape-") as workdir:
        redis = servers.start_redis(Path(workdir) / "redis")
        try:
            settings = Settings.from_env(
                {
                    "REDIS_URL": str(redis.url),
                    "RUNWARE_API_KEY": BENCH_KEY,
                    "WEBHOOK_SECRETS": "b" * 32,
                    "LOG_FORMAT": "text",
                }
            )
            service = build_service(settings)
            mode = "multiprocess" if metrics.multiprocess() else "one process"
            print(f"/metrics render time ({mode}, Redis {redis.url})")
            report("no job", time_scrapes(service, settings, args.scrapes))
            started = time.perf_counter()
            fill(service, args.jobs, time.time())
            print(f"  ({args.jobs} jobs written in {time.perf_counter() - started:.1f} s)")
            report(f"{args.jobs} jobs", time_scrapes(service, settings, args.scrapes))
            print(service.context.store.active_count(), "active jobs in Redis")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
