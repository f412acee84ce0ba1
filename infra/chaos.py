"""The chaos run: images through the whole local stack under injected faults, kills and restarts."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import redis

from infra import supervise
from infra.chaos_account import PERMANENT_ITEM_CODE, ChaosAccount, Counts
from infra.stack import LocalStack, StackConfig
from infra.supervise import ProcessError, Service
from pipeline.config import Settings
from pipeline.http import RetryOnDisconnectTransport
from pipeline.models import JOB_TERMINAL
from pipeline.store import RedisJobStore, redis_client

BUCKET = "imagine-chaos"
EMULATOR_KEY = "chaos-runware-key"
IMAGES_PER_JOB = 4
# The fault mix of a full run, as shares of the events they apply to.
FAULT_RATES: dict[str, Any] = {
    "drop_webhook_rate": 0.20,
    "duplicate_webhook_rate": 0.20,
    "reorder_webhook_rate": 0.10,
    "submit_error_rate": 0.10,
    "submit_error_statuses": [429, 503],
    "retry_after_s": 1,
    "upload_fail_rate": 0.05,
    "item_error_rate": 0.02,
    "item_error_permanent_share": 0.5,
    # Provider behaviour seen in the field: a poll that does not find a live task, a conflict
    # that names no task, and failure codes nobody documented.
    "not_found_for_live_task": 0.05,
    "conflict_without_task_uuid": True,
    "unknown_item_code": 0.01,
}
# The fault mix of a reduced run, as exact counts of one-shot faults.
FAULT_COUNTS: list[dict[str, Any]] = [
    {"kind": "drop_webhook", "count": 6},
    {"kind": "duplicate_webhook", "count": 6},
    {"kind": "reorder_webhook", "count": 3},
    {"kind": "submit_error", "count": 2, "status": 429, "retry_after_s": 1},
    {"kind": "submit_error", "count": 1, "status": 503, "retry_after_s": 1},
    {"kind": "upload_fail", "count": 2},
    {"kind": "item_error", "count": 1, "code": PERMANENT_ITEM_CODE},
    {"kind": "item_error", "count": 1, "code": "timeoutProvider"},
]
# Settings of the pipeline processes: a fast reconciler (1 s, 5 s grace: see ChaosStack) and
# short waits, so the run drains in minutes.
PIPELINE_TUNING = {
    "UPLOAD_WAIT_SECONDS": "2",
    "FINALIZE_RETRY_SECONDS": "1",
    "CIRCUIT_PROBE_SECONDS": "2",
    "RETRY_BACKOFF_CAP_SECONDS": "8",
    "RUNWARE_MAX_IN_FLIGHT": "32",
    "BUDGET_WAIT_SECONDS": "1",
    # Limits far above any run's load: checked on every submit, never refusing one.
    "API_RATE_LIMIT": "100000/second",
    "TENANT_DAILY_IMAGES": "10000000",
    "TENANT_DAILY_SPEND_USD": "10000000",
    "GLOBAL_DAILY_SPEND_USD": "10000000",
}


class ChaosFailure(RuntimeError):
    """The stack did not recover from a fault within its deadline."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP asked the run to stop."""


def say(message: str) -> None:
    print(f"chaos [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def last_error(log: str) -> str:
    """The last error line of a log, for a one-line account of a crash."""
    for line in reversed(log.splitlines()):
        if "CRITICAL" in line or "Error" in line:
            return line.strip()[:300]
    return "no error logged"


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.25
) -> None:
    """Poll check until it holds; raise ChaosFailure at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, redis.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise ChaosFailure(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Profile:
    """What one run injects."""

    images: int
    seed: int
    exact_faults: bool
    kills: list[tuple[str, str]]  # (worker name, "child" | "main")
    restart_receiver: bool
    restart_redis: bool
    submit_seconds: float

    @property
    def jobs(self) -> int:
        return max(1, -(-self.images // IMAGES_PER_JOB))


class ChaosStack(LocalStack):
    """The local stack with two workers, and what a supervisor does when one exits."""

    def __init__(self, workdir: Path, seed: int) -> None:
        config = StackConfig(
            workdir=workdir,
            bucket=BUCKET,
            emulator_key=EMULATOR_KEY,
            emulator_args=("--seed", str(seed)),
            redis_aof=True,
            workers=("w1", "w2"),
            concurrency=2,
            flower=False,
            reconcile_interval_seconds=1,
            reconcile_grace_seconds=5,
            extra_env=PIPELINE_TUNING,
        )
        super().__init__(config, say=say)
        self.hostname = socket.gethostname()
        self.incarnations: dict[str, int] = {}
        self.crashes: list[str] = []

    def start_worker(self, name: str, log_dir: Path | None = None) -> Service:
        """Start worker name again, with a log of its own per incarnation (readiness reads it)."""
        incarnation = self.incarnations.get(name, 0) + 1
        self.incarnations[name] = incarnation
        return super().start_worker(name, log_dir=self.log_dir / f"{name}.{incarnation}")

    def settings(self) -> Settings:
        """The settings every pipeline process of this stack runs with."""
        return Settings.from_env(self.env)

    @property
    def receiver_url(self) -> str:
        return self.urls["RECEIVER_URL"]

    @property
    def emulator_url(self) -> str:
        return self.urls["EMULATOR_URL"]

    def nodename(self, name: str) -> str:
        return f"{name}@{self.hostname}"

    def check_alive(self) -> None:
        """Fail when a server died; restart a worker that exited, as its supervisor would."""
        for name, worker in self.workers.items():
            if not worker.process.alive:
                self.crashes.append(
                    f"{self.nodename(name)} exited on its own with code "
                    f"{worker.process.returncode}: {last_error(worker.process.log_text())}"
                )
                say(f"supervisor: {self.crashes[-1]}; starting it again")
                worker.process.stop(timeout=5)
                self.start_worker(name)
        for service in self.services.values():
            if not service.process.alive:
                raise ChaosFailure(
                    f"{service.name} exited with code "
                    f"{service.process.returncode}\n{service.process.tail()}"
                )


def _pid(service: Service) -> int:
    """The pid of a running service's leader."""
    if service.process.pid is None:
        raise ChaosFailure(f"{service.name} was never started")
    return service.process.pid


class Inspector:
    """Celery remote control over the broker, to see what each worker runs and has run.

    It is the pipeline's own Celery app (its transport and queues), made afresh when a broker
    restart leaves the old one's pooled connections dead."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = self._connect()

    def _connect(self) -> Any:
        from pipeline.dispatch import create_celery  # late: only the chaos run needs Celery

        return create_celery(self.settings)

    def _call(self, method: str, node: str) -> Any:
        try:
            inspect = self.app.control.inspect(destination=[node], timeout=1.5)
            answer = getattr(inspect, method)() or {}
        except Exception:
            # A restarted broker leaves this client's pooled connections dead: start afresh.
            self.close()
            self.app = self._connect()
            return None
        return answer.get(node)

    def busy_pids(self, node: str) -> list[int]:
        active = self._call("active", node) or []
        return [int(task["worker_pid"]) for task in active if task.get("worker_pid")]

    def probe(self, node: str) -> None:
        """Send a harmless task (a reconciler pass) to this worker's own queue."""
        from celery.utils import worker_direct

        try:
            self.app.send_task("imagine.reconcile", queue=worker_direct(node))
        except Exception:
            self.close()
            self.app = self._connect()

    def total(self, node: str) -> int | None:
        stats = self._call("stats", node)
        if not stats:
            return None
        return int(sum((stats.get("total") or {}).values()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


class Submitter(threading.Thread):
    """Submits the run's jobs through the jobs API at a steady pace, retrying across restarts."""

    def __init__(self, stack: ChaosStack, profile: Profile, stop: threading.Event) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.stack = stack
        self.profile = profile
        self.stop_event = stop
        self.job_ids: list[str] = []
        self.requested = 0
        self.error: BaseException | None = None
        self.retries = 0
        self.lock = threading.Lock()

    def body(self, index: int, images: int) -> dict[str, Any]:
        return {
            "positivePrompt": f"chaos run {self.profile.seed}: a lighthouse, study {index}",
            "resolution": "1K",
            "outputFormat": "JPG",
            "numberResults": images,
            "deadlineSeconds": 1800,
            "metadata": {"run": f"chaos-{self.profile.seed}"},
            "idempotencyKey": f"chaos-{self.profile.seed}-{index}",
        }

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        jobs = self.profile.jobs
        gap = self.profile.submit_seconds / max(1, jobs)
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {self.stack.api_key}"}
        remaining = self.profile.images
        with httpx.Client(
            base_url=self.stack.receiver_url,
            timeout=10,
            headers=headers,
            transport=RetryOnDisconnectTransport(),
        ) as client:
            for index in range(jobs):
                images = min(IMAGES_PER_JOB, remaining)
                remaining -= images
                job_id = self._submit(client, self.body(index, images))
                with self.lock:
                    self.job_ids.append(job_id)
                    self.requested += images
                pause = started + gap * (index + 1) - time.monotonic()
                if pause > 0 and self.stop_event.wait(pause):
                    return

    def _submit(self, client: httpx.Client, body: dict[str, Any]) -> str:
        """POST one job until the API answers; the idempotency key keeps retries to one job."""
        deadline = time.monotonic() + 120
        while not self.stop_event.is_set():
            try:
                response = client.post("/v1/jobs", json=body)
                if response.status_code in (200, 202):
                    return str(response.json()["id"])
                if response.status_code < 500 and response.status_code != 429:
                    raise ChaosFailure(
                        f"the jobs API refused a job: {response.status_code} {response.text[:500]}"
                    )
            except httpx.HTTPError:
                pass
            self.retries += 1
            if time.monotonic() > deadline:
                raise ChaosFailure("the jobs API did not accept a job for 120s")
            time.sleep(0.5)
        raise ChaosFailure("stopped")

    def submitted(self) -> int:
        with self.lock:
            return len(self.job_ids)

    def ids(self) -> list[str]:
        with self.lock:
            return list(self.job_ids)


class ChaosRun:
    """One run: start the stack, submit, inject, drain, account."""

    def __init__(self, profile: Profile, workdir: Path, timeout: float) -> None:
        self.profile = profile
        self.workdir = workdir
        self.timeout = timeout
        self.stack = ChaosStack(workdir, profile.seed)
        self.stop_event = threading.Event()
        self._inspector: Inspector | None = None
        self._submitter: Submitter | None = None
        self._store: RedisJobStore | None = None
        self._redis: redis.Redis | None = None
        self.deadline = 0.0

    @property
    def inspector(self) -> Inspector:
        if self._inspector is None:
            raise ChaosFailure("the run has not started")
        return self._inspector

    @property
    def store(self) -> RedisJobStore:
        if self._store is None:
            raise ChaosFailure("the run has not started")
        return self._store

    @property
    def submitter(self) -> Submitter:
        if self._submitter is None:
            raise ChaosFailure("the run has not started")
        return self._submitter

    # --- emulator controls ---
    def emulator_call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.stack.emulator_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def arm_faults(self) -> None:
        config: dict[str, Any] = {
            "seed": self.profile.seed,
            "latency_min_ms": 200,
            "latency_max_ms": 1200,
        }
        if self.profile.exact_faults:
            self.emulator_call("PATCH", "/_emulator/config", config)
            for entry in FAULT_COUNTS:
                self.emulator_call("POST", "/_emulator/faults/queue", entry)
            say(
                "faults armed: "
                + ", ".join(
                    f"{entry['count']}x {entry['kind']}"
                    + (
                        f"({entry.get('status') or entry.get('code')})"
                        if entry.get("status") or entry.get("code")
                        else ""
                    )
                    for entry in FAULT_COUNTS
                )
            )
        else:
            config.update(FAULT_RATES)
            self.emulator_call("PATCH", "/_emulator/config", config)
            say("faults armed: " + ", ".join(f"{k}={v}" for k, v in FAULT_RATES.items()))

    # --- progress ---
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def wait_submitted(self, share: float) -> None:
        target = max(1, int(self.profile.jobs * share))
        wait_until(
            lambda: self._submitter_ok() and self.submitter.submitted() >= target,
            max(5.0, self.remaining()),
            f"{target} jobs submitted",
        )

    def _submitter_ok(self) -> bool:
        if self.submitter.error is not None:
            raise ChaosFailure(f"submitting failed: {self.submitter.error}")
        return True

    # --- faults ---
    def totals(self) -> dict[str, int | None]:
        return {
            name: self.inspector.total(self.stack.nodename(name)) for name in self.stack.workers
        }

    def expect_consuming(self, before: dict[str, int | None], what: str) -> None:
        """Every worker runs tasks again: its task total grows past what it was before."""
        started = time.monotonic()
        incarnations = dict(self.stack.incarnations)
        for name in sorted(self.stack.workers):
            node = self.stack.nodename(name)

            def grew(name: str = name, node: str = node) -> bool:
                self.stack.check_alive()
                # A worker started again since counts its tasks from zero.
                floor = (
                    before.get(name) or 0
                    if self.stack.incarnations[name] == incarnations[name]
                    else 0
                )
                total = self.inspector.total(node)
                if total is not None and total > floor:
                    return True
                # Idle workers blocked on the same queues can be starved by one another, so
                # shared traffic proves nothing: a task on the worker's own queue does.
                self.inspector.probe(node)
                return False

            try:
                wait_until(grew, 90, f"{node} to consume tasks after {what}", interval=0.5)
            except ChaosFailure as exc:
                active = self.inspector._call("active", node)
                raise ChaosFailure(f"{exc}; it runs {active}") from None
        say(f"after {what}: every worker consumes again ({time.monotonic() - started:.1f}s)")

    def kill_child(self, name: str) -> None:
        """SIGKILL one pool process of a worker, one that runs a task when one can be found."""
        worker = self.stack.workers[name]
        node = self.stack.nodename(name)
        main_pid = _pid(worker)
        before = self.totals()
        children = {child.pid for child in psutil.Process(main_pid).children()}
        victim: int | None = None
        busy = False
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            pids = [pid for pid in self.inspector.busy_pids(node) if pid in children]
            if pids:
                victim, busy = pids[0], True
            else:
                time.sleep(0.1)
        if victim is None:
            victim = sorted(children)[0]
        os.kill(victim, signal.SIGKILL)
        say(
            f"killed pool process {victim} of {node} with SIGKILL "
            f"({'mid-task' if busy else 'idle'})"
        )
        wait_until(
            lambda: len(psutil.Process(main_pid).children()) >= 2,
            30,
            f"{node} to replace its pool process",
        )
        self.expect_consuming(before, f"the pool kill on {name}")

    def kill_main(self, name: str) -> None:
        """SIGKILL a worker's main process, then its orphans, then start it again."""
        worker = self.stack.workers[name]
        process = worker.process
        pid = _pid(worker)
        process.kill(signal.SIGKILL, group=False)
        say(f"killed main process {pid} of {self.stack.nodename(name)} with SIGKILL")
        wait_until(lambda: not process.alive, 15, f"{name} main process to exit")
        # What a dying container takes along: the orphaned pool processes.
        process.kill(signal.SIGKILL)
        process.stop(timeout=5)
        self.stack.start_worker(name)
        say(f"restarted {self.stack.nodename(name)}")
        before = self.totals()
        before[name] = 0
        self.expect_consuming(before, f"the restart of {name}")

    def restart_receiver(self) -> None:
        """SIGKILL gunicorn's master, let its workers go, start it again on the same port."""
        receiver = self.stack.services["receiver"]
        before = self.totals()
        receiver.process.kill(signal.SIGKILL, group=False)
        say(f"killed the receiver's gunicorn master {_pid(receiver)} with SIGKILL")
        wait_until(lambda: not receiver.process.alive, 15, "the gunicorn master to exit")
        with contextlib.suppress(ChaosFailure):
            # Orphaned gunicorn workers notice their master is gone and exit on their own.
            wait_until(
                lambda: not receiver.process._group_alive(), 3, "the gunicorn workers to exit"
            )
        receiver.process.stop(timeout=5)
        self.stack.start_receiver()
        say(f"restarted the receiver on port {self.stack.receiver_port}")
        self.expect_consuming(before, "the receiver restart")

    def restart_redis(self) -> None:
        """SIGTERM Redis (AOF on), start it again on the same port and data directory."""
        redis_service = self.stack.services["redis"]
        before = self.totals()
        code = redis_service.stop(timeout=15)
        say(f"stopped Redis with SIGTERM (exit code {code})")
        time.sleep(1.0)
        self.stack.start_redis()
        say(f"restarted Redis on port {self.stack.redis_port} from its append-only file")
        self.expect_consuming(before, "the Redis restart")

    def schedule(self) -> list[tuple[float, str, Callable[[], None]]]:
        """Each fault, at the share of submitted jobs it waits for."""
        steps: list[tuple[str, Callable[[], None]]] = []
        for name, kind in self.profile.kills:
            if kind == "child":
                steps.append((f"pool kill on {name}", lambda n=name: self.kill_child(n)))
            else:
                steps.append((f"main kill on {name}", lambda n=name: self.kill_main(n)))
        if self.profile.restart_receiver:
            steps.insert(min(2, len(steps)), ("receiver restart", self.restart_receiver))
        if self.profile.restart_redis:
            steps.insert(min(3, len(steps)), ("Redis restart", self.restart_redis))
        count = len(steps)
        return [
            (0.1 + 0.8 * index / max(1, count), label, step)
            for index, (label, step) in enumerate(steps)
        ]

    # --- the run ---
    def run(self) -> Counts:
        started = time.monotonic()
        self.deadline = started + self.timeout
        say(f"starting the stack in {self.workdir} (seed {self.profile.seed})")
        self.stack.start()
        say(
            f"stack up in {time.monotonic() - started:.1f}s: receiver {self.stack.receiver_url}, "
            f"emulator {self.stack.emulator_url}, workers w1 and w2 (concurrency 2), beat"
        )
        settings = self.stack.settings()
        self._redis = redis_client(settings)
        self._store = RedisJobStore.from_settings(settings, self._redis)
        self._inspector = Inspector(settings)
        self.arm_faults()
        self._submitter = Submitter(self.stack, self.profile, self.stop_event)
        submit_started = time.monotonic()
        self.submitter.start()
        say(
            f"submitting {self.profile.jobs} jobs ({self.profile.images} images) over "
            f"{self.profile.submit_seconds:.0f}s"
        )
        for share, label, step in self.schedule():
            self.wait_submitted(share)
            self.stack.check_alive()
            say(f"injecting: {label}")
            step()
        self.submitter.join(timeout=max(1.0, self.remaining()))
        if self.submitter.is_alive():
            raise ChaosFailure("the submitter did not finish before the deadline")
        self._submitter_ok()
        say(
            f"all {self.submitter.submitted()} jobs submitted "
            f"({self.submitter.retries} API retries); waiting for the work to drain"
        )
        job_ids = self.submitter.ids()
        self.wait_drained(job_ids)
        drain_s = time.monotonic() - submit_started
        say(f"every job is terminal after {drain_s:.1f}s")
        with contextlib.suppress(ChaosFailure):
            wait_until(
                lambda: bool(self.emulator_call("GET", "/_emulator/idle")["idle"]),
                30,
                "the emulator to be idle",
            )
        counts = self.account(job_ids, self.submitter.requested)
        counts.drain_s = drain_s
        return counts

    def wait_drained(self, job_ids: list[str]) -> None:
        open_ids = list(job_ids)
        last_report = time.monotonic()

        def drained() -> bool:
            nonlocal open_ids, last_report
            self.stack.check_alive()
            open_ids = [
                job_id for job_id in open_ids if self.store.job_state(job_id) not in JOB_TERMINAL
            ]
            if open_ids and time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                say(f"{len(open_ids)} jobs still open")
            return not open_ids

        try:
            wait_until(drained, max(5.0, self.remaining()), "every job to end", interval=0.5)
        except ChaosFailure:
            for job_id in open_ids[:10]:
                say(f"still open: {self.describe_job(job_id)}")
            raise

    def describe_job(self, job_id: str) -> str:
        """A job's state, reason and slot states, for a run that did not drain."""
        job = self.store.get_job(job_id)
        if job is None:
            return f"job {job_id} None (no reason), slots []"
        states = [
            str(slot.state) if slot else None
            for slot in (job.slot(n) for n in range(job.slot_count))
        ]
        return f"job {job_id} {job.state} ({job.reason or 'no reason'}), slots {states}"

    # --- accounting ---
    def account(self, job_ids: list[str], requested: int) -> Counts:
        """Account for every requested image; see infra.chaos_account."""
        accountant = ChaosAccount(
            self.store,
            self.stack.s3_client(),
            BUCKET,
            lambda path: self.emulator_call("GET", path),
            say,
        )
        return accountant.account(job_ids, requested, exact_faults=self.profile.exact_faults)

    def close(self) -> None:
        self.stop_event.set()
        if self._inspector is not None:
            self._inspector.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
        self.stack.stop(timeout=8)


def build_profile(args: argparse.Namespace) -> Profile:
    if args.reduced:
        kills = [("w1", "main")]
        submit_seconds = args.submit_seconds if args.submit_seconds is not None else 20.0
    else:
        kills = [("w1", "child"), ("w2", "main"), ("w2", "child")]
        submit_seconds = args.submit_seconds if args.submit_seconds is not None else 90.0
    return Profile(
        images=args.images,
        seed=args.seed,
        exact_faults=args.reduced,
        kills=kills,
        restart_receiver=not args.no_receiver_restart,
        restart_redis=not args.no_redis_restart,
        submit_seconds=submit_seconds,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.chaos",
        description="Run images through the local stack under injected provider faults, "
        "worker kills, a receiver kill and a Redis restart; account for every image.",
    )
    parser.add_argument("--images", type=int, default=500, help="images to request (default 500)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the fault schedule")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="data and logs (default .run/chaos/<seed>-<time>)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=540.0,
        help="seconds the whole run may take before it fails (default 540)",
    )
    parser.add_argument(
        "--reduced", action="store_true", help="exact counts of one-shot faults and one worker kill"
    )
    parser.add_argument(
        "--submit-seconds",
        type=float,
        default=None,
        help="spread the submissions over this many seconds",
    )
    parser.add_argument("--no-receiver-restart", action="store_true")
    parser.add_argument("--no-redis-restart", action="store_true")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = build_profile(args)
    workdir = (
        args.workdir
        or supervise.REPO_ROOT
        / ".run"
        / "chaos"
        / f"{profile.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    ).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _interrupt)
    run = ChaosRun(profile, workdir, args.timeout)
    started = time.monotonic()
    counts: Counts | None = None
    try:
        counts = run.run()
    except (ChaosFailure, ProcessError) as exc:
        say(f"FAILED: {exc}")
    except (KeyboardInterrupt, Interrupted):
        say("interrupted; stopping the stack")
        raise
    finally:
        run.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    say(f"logs in {workdir / 'logs'}; wall time {time.monotonic() - started:.1f}s")
    if counts is None:
        print("chaos: run failed before accounting", flush=True)
        return 1
    for crash in run.stack.crashes:
        # Every fault is one a worker must ride out: one that exits on its own fails the run.
        say(f"problem: worker crash (restarted by the supervisor): {crash}")
    for problem in counts.problems:
        say(f"problem: {problem}")
    if counts.failed > counts.permanent_injected:
        say(
            f"problem: {counts.failed} failed slots, but only {counts.permanent_injected} "
            "permanent item failures were injected"
        )
    print(counts.line(), flush=True)
    return 0 if counts.ok and not run.stack.crashes else 1


if __name__ == "__main__":
    sys.exit(main())
