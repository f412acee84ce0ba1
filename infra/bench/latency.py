"""Latency at a paced load: webhook received -> stored, enqueue -> sent, and S3's own copy."""

from __future__ import annotations

import threading
import time
from typing import Any

from infra.bench import stats
from pipeline.models import Job

COPY_SOURCE = "bench-copy/source.jpg"


class CopyLoop(threading.Thread):
    """CopyObject of one image-sized object on the stack's S3, paced, timing each call (ms)."""

    def __init__(self, s3: Any, bucket: str, data: bytes, per_second: float) -> None:
        super().__init__(name="bench-copy", daemon=True)
        self.s3 = s3
        self.bucket = bucket
        self.interval = 1 / per_second
        self.halt = threading.Event()
        self.ms: list[float] = []
        self.error: BaseException | None = None
        s3.put_object(Bucket=bucket, Key=COPY_SOURCE, Body=data)

    def run(self) -> None:
        began = time.monotonic()
        n = 0
        try:
            while not self.halt.is_set():
                self._copy(n)
                n += 1
                self.halt.wait(max(0.0, began + n * self.interval - time.monotonic()))
        except BaseException as exc:
            self.error = exc

    def _copy(self, n: int) -> None:
        t0 = time.perf_counter()
        self.s3.copy_object(
            Bucket=self.bucket,
            Key=f"bench-copy/{n:06d}.jpg",
            CopySource={"Bucket": self.bucket, "Key": COPY_SOURCE},
        )
        self.ms.append((time.perf_counter() - t0) * 1000)


def slot_latencies(jobs: list[Job]) -> tuple[list[float], list[float]]:
    """(webhook received -> final object stored, job created -> provider request sent), in ms."""
    store_ms: list[float] = []
    submit_ms: list[float] = []
    for job in jobs:
        for slot in job.slots:
            if slot.received_at is not None and slot.stored_at is not None:
                store_ms.append((slot.stored_at - slot.received_at) * 1000)
            if slot.submitted_at is not None:
                submit_ms.append((slot.submitted_at - job.created_at) * 1000)
    return store_ms, submit_ms


def summary(store_ms: list[float], submit_ms: list[float], copy_ms: list[float]) -> dict[str, Any]:
    return {
        "received_to_stored_ms": stats.spread(store_ms),
        "enqueue_to_sent_ms": stats.spread(submit_ms),
        "s3_copy_ms": stats.spread(copy_ms),
        "store_p99_ms": stats.percentile(store_ms, 0.99),
        "copy_p99_ms": stats.percentile(copy_ms, 0.99),
    }


def during(copies: CopyLoop, work: Any) -> Any:
    """Run work() while the copy loop runs beside it."""
    copies.start()
    try:
        return work()
    finally:
        copies.halt.set()
        copies.join(30)
        if copies.error is not None:
            raise copies.error
