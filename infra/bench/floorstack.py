"""The floor's two processes, a real Celery worker and a real gunicorn, beside the pipeline's."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import redis

from infra.bench import floor
from infra.stack import LocalStack
from infra.supervise import (
    REPO_ROOT,
    ManagedProcess,
    Service,
    child_env,
    free_port,
    poll_until,
    start_listening,
    venv_bin,
    wait_for_http,
)
from pipeline.config import Settings


class FloorError(RuntimeError):
    """The floor did not finish its images."""


def start_floor_receiver(env: Mapping[str, str], log_dir: Path, port: int) -> Service:
    """The hello-world handler under the receiver's gunicorn settings (webhooks.gunicorn_conf)."""

    def build(chosen: int) -> ManagedProcess:
        argv = [venv_bin("gunicorn"), "-c", "python:webhooks.gunicorn_conf",
                "-b", f"127.0.0.1:{chosen}", "infra.bench.floor_wsgi:app"]  # fmt: skip
        return ManagedProcess(
            "floor-receiver", argv, log_dir=log_dir, env=child_env(env), cwd=REPO_ROOT
        )

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/healthz", 60, process=process)

    process, chosen = start_listening(build, ready, port)
    return Service(process, f"http://127.0.0.1:{chosen}", chosen)


def launch_floor_worker(
    env: Mapping[str, str], concurrency: int, log_dir: Path
) -> tuple[ManagedProcess, str]:
    """A prefork worker of the floor's queue with the pipeline worker's concurrency."""
    hostname = f"bench-floor-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    argv = [venv_bin("celery"), "-A", "infra.bench.floor_worker", "worker",
            "-Q", floor.FLOOR_QUEUE, "-c", str(concurrency), "--hostname", hostname,
            "-l", "WARNING", "--without-gossip", "--without-mingle"]  # fmt: skip
    process = ManagedProcess("floor-worker", argv, log_dir=log_dir, env=child_env(env),
                             cwd=REPO_ROOT)  # fmt: skip
    return process.start(), hostname


class Floor:
    """Starts the floor on a running stack's Redis and S3, runs rounds of images through it."""

    def __init__(self, stack: LocalStack, concurrency: int) -> None:
        self.stack = stack
        self.concurrency = concurrency
        self.redis = redis.Redis.from_url(stack.env["REDIS_URL"])
        self.services: dict[str, Service] = {}
        self.app = floor.create_floor_celery(Settings.from_env(stack.env))

    def start(self) -> None:
        """Start the worker and the handler at once: the worker only needs the handler's URL."""
        port = free_port()
        env = {**self.stack.env, floor.RECEIVER_VARIABLE: f"http://127.0.0.1:{port}"}
        worker, hostname = launch_floor_worker(env, self.concurrency, self.stack.log_dir)
        self.services["floor-worker"] = Service(worker)
        self.services["floor-receiver"] = start_floor_receiver(
            self.stack.env, self.stack.log_dir, port
        )
        poll_until(lambda: bool(self.redis.exists(floor.ready_key(hostname))), 60,
                   "floor worker ready", worker)  # fmt: skip

    def pids(self) -> dict[str, int | None]:
        return {name: service.process.pid for name, service in self.services.items()}

    def run(self, images: int, timeout: float) -> tuple[float, float]:
        """Send images messages; when the first was sent and when the last copy was counted."""
        run = uuid.uuid4().hex[:12]
        began = time.time()
        for n in range(images):
            self.app.send_task(floor.TASK_NAME, args=[run, n, images], queue=floor.FLOOR_QUEUE)
        try:
            poll_until(lambda: bool(self.redis.exists(floor.ended_key(run))), timeout,
                       f"{images} floor images")  # fmt: skip
        except Exception as exc:
            done = int(self.redis.get(floor.done_key(run)) or 0)
            raise FloorError(f"the floor finished {done} of {images} images: {exc}") from exc
        return began, float(self.redis.get(floor.ended_key(run)) or 0)

    def check(self) -> None:
        for service in self.services.values():
            if not service.process.alive:
                raise FloorError(f"{service.name} exited:\n{service.process.tail(30)}")

    def stop(self) -> None:
        # The worker first: its keep-alive connections would hold the handler's graceful stop.
        for name in ("floor-worker", "floor-receiver"):
            if name in self.services:
                self.services[name].stop(10)
        self.app.close()
        self.redis.close()
