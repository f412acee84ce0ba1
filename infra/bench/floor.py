"""The floor: a pipeline with no logic, doing only what every image must cost on these servers.

Per image: one Celery message to a worker, which PUTs the bytes of a 1024x1024 JPEG to S3 and
POSTs a webhook to a hello-world Flask handler, which copies the object to its final key, counts
the image in Redis (INCR, summed over gunicorn's workers) and answers 200. The worker has the
pipeline's delivery settings (pool, prefetch, acks) and the handler runs under the receiver's
gunicorn settings, so whatever the pipeline costs beyond this is its own.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import redis
from botocore.config import Config
from celery import Celery, signals
from flask import Flask, request
from kombu import Exchange, Queue

from infra.emulator import catalog, render
from pipeline.config import Settings
from pipeline.dispatch import create_celery

FLOOR_QUEUE = "bench-floor"
TASK_NAME = "bench.floor_image"
RECEIVER_VARIABLE = "BENCH_FLOOR_RECEIVER_URL"
SIDE = 1024
# The pipeline app's settings that decide how messages are delivered and run; the floor takes
# them from the pipeline's own app, so a change there changes the floor too. Task events are
# left out: they feed monitoring, which the floor does not have.
SHARED_CELERY_SETTINGS = (
    "broker_transport",
    "broker_transport_options",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "task_ignore_result",
    "task_serializer",
    "accept_content",
    "worker_hijack_root_logger",
)


def done_key(run: str) -> str:
    return f"bench:floor:{run}:done"


def ended_key(run: str) -> str:
    return f"bench:floor:{run}:ended"


def ready_key(hostname: str) -> str:
    return f"bench:floor:ready:{hostname}"


@dataclass(frozen=True)
class Parts:
    """What one floor process holds for its life: clients built once."""

    settings: Settings
    s3: Any
    redis: redis.Redis


def _s3_client(settings: Settings) -> Any:
    # The pipeline's client settings (storage.S3ObjectStorage.from_settings).
    config = Config(
        signature_version="s3v4",
        connect_timeout=5.0,
        read_timeout=30.0,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
    )
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config
    )


@functools.cache
def parts() -> Parts:
    """Built in the process that serves (a prefork child, a gevent-patched gunicorn worker)."""
    settings = Settings.from_env()
    return Parts(settings, _s3_client(settings), redis.Redis.from_url(settings.redis_url))


@functools.cache
def provider() -> tuple[httpx.Client, bytes]:
    """The worker's side of the provider: its webhook client and the bytes it uploads."""
    return httpx.Client(timeout=30), render.reused_image(SIDE, SIDE, "JPG", catalog.DEFAULT_QUALITY)


def staging_key(run: str, n: int) -> str:
    return f"bench-floor/{run}/staging/{n}"


def deliver_image(run: str, n: int, total: int) -> None:
    """What the provider does for one image: PUT its bytes, then POST the webhook."""
    own = parts()
    http, image = provider()
    key = staging_key(run, n)
    own.s3.put_object(Bucket=own.settings.s3_bucket, Key=key, Body=image)
    receiver = os.environ[RECEIVER_VARIABLE]
    answer = http.post(f"{receiver}/hook/{run}/{n}", json={"key": key, "total": total})
    answer.raise_for_status()


def create_floor_celery(settings: Settings | None = None) -> Celery:
    """The floor's Celery app on the pipeline's broker, with the pipeline's delivery settings."""
    settings = settings or Settings.from_env()
    pipeline_conf = create_celery(settings).conf
    app = Celery("bench-floor", broker=settings.broker_url)
    app.conf.update({name: pipeline_conf[name] for name in SHARED_CELERY_SETTINGS})
    app.conf.update(
        task_queues=[Queue(FLOOR_QUEUE, Exchange(FLOOR_QUEUE, type="direct"), FLOOR_QUEUE)],
        task_default_queue=FLOOR_QUEUE,
    )
    app.task(name=TASK_NAME)(deliver_image)
    signals.worker_ready.connect(_announce_ready, weak=False)
    return app


def _announce_ready(sender: Any = None, **_: Any) -> None:
    client = redis.Redis.from_url(Settings.from_env().redis_url)
    client.set(ready_key(str(getattr(sender, "hostname", "floor"))), repr(time.time()), ex=3600)
    client.close()


def create_floor_app() -> Flask:
    """The hello-world handler: one S3 copy, one count, 200."""
    app = Flask("bench-floor")

    @app.post("/hook/<run>/<int:n>")
    def hook(run: str, n: int) -> tuple[str, int]:
        own = parts()
        body = request.get_json()
        bucket = own.settings.s3_bucket
        own.s3.copy_object(
            Bucket=bucket,
            Key=f"bench-floor/{run}/final/{n:05d}.jpg",
            CopySource={"Bucket": bucket, "Key": body["key"]},
        )
        if own.redis.incr(done_key(run)) == body["total"]:
            own.redis.set(ended_key(run), repr(time.time()), ex=3600)
        return "ok", 200

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    return app
