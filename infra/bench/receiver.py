"""Receiver phase: webhook requests per second under wrk, beside a hello-world floor.

Against the receiver of a local stack, wrk replays (a) the exact webhook of an image already
stored (the duplicate path) and (b) first results of images awaiting them, their bytes staged
beforehand at their upload keys (fresh results); (c) the same wrk settings against a hello-world
Flask app under the receiver's gunicorn settings give the floor. The CPU's speed drifts, so the
rounds are interleaved (hello, redis floor, duplicate, hello, fresh, hello, duplicate, redis
floor, hello) and each measured round is compared with the mean of the hello rounds on either
side of it. The redis floor is the same app reading the JSON body and making one Redis round
trip, the least any webhook handler does: the receiver's rate beside it shows what is left of
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import redis

from infra import debian
from infra.stack import LocalStack, StackConfig
from infra.supervise import (
    REPO_ROOT,
    ManagedProcess,
    Service,
    child_env,
    start_listening,
    venv_bin,
    wait_for_http,
)
from pipeline.config import Settings
from pipeline.models import JOB_TERMINAL, JobState, SlotState, SubmitOutcome
from pipeline.services import JobService
from pipeline.wiring import build_service

WRK_SCRIPT = Path(__file__).with_name("wrk") / "webhooks.lua"
# The hello app's path prefix for its floor with a JSON body read and one Redis round trip.
REDIS_FLOOR = "/floor/redis"
BUCKET = "imagine-bench"
TENANT = "dev"
IMAGES_PER_JOB = 20  # the most one job asks for: one Runware request carries all its tasks
# The emulator holds every task this long: nothing is delivered while wrk plays the results.
NEVER_MS = 24 * 3600 * 1000
JOB_REQUEST = {
    "positivePrompt": "a lighthouse on a cliff at dusk, benchmark",
    "width": 1024,
    "height": 1024,
    "outputFormat": "JPG",
    "deadlineSeconds": 3600,
}


class BenchError(RuntimeError):
    """A phase cannot run or measured something other than what it claims."""


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


# --- wrk -----------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path, installing Debian's wrk package first if it is missing."""
    found = debian.ensure_command("wrk", "wrk", say)
    if found is None:
        raise BenchError(
            "wrk is not installed and `apt-get install -y wrk` did not install it: "
            "install Debian's wrk package (as root) and run again"
        )
    return found


@dataclass(frozen=True)
class WrkRequest:
    """One POST as wrk sends it: path with query, and a JSON body on one line."""

    path: str
    body: str

    def line(self) -> str:
        if any(char in self.path + self.body for char in "\t\r\n"):
            raise ValueError("a wrk request line may hold no tab or line break")
        return f"{self.path}\t{self.body}"


def webhook_request(url: str, body: Any) -> WrkRequest:
    """The request wrk sends for a webhook URL and body (encoded as the emulator encodes it)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return WrkRequest(path, json.dumps(body))


def write_requests(path: Path, requests: Iterable[WrkRequest]) -> Path:
    path.write_text("".join(request.line() + "\n" for request in requests))
    return path


@dataclass(frozen=True)
class WrkLoad:
    """How hard wrk pushes: the same for the floor and the receiver."""

    threads: int = 1
    connections: int = 16
    timeout_s: int = 10  # wrk leaves slower requests out of its latency figures


@dataclass(frozen=True)
class WrkRound:
    """What one wrk run measured."""

    name: str
    requests: int
    seconds: float
    errors: int  # non-2xx answers and socket errors
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def parse_wrk(name: str, output: str) -> WrkRound:
    """The round from the `WRK {json}` line webhooks.lua prints."""
    line = next((row for row in output.splitlines() if row.startswith("WRK {")), None)
    if line is None:
        raise BenchError(f"wrk printed no summary for {name}:\n{output[-2000:]}")
    raw = json.loads(line.removeprefix("WRK "))
    socket_errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
    return WrkRound(
        name=name,
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=raw["status_errors"] + socket_errors,
        timeouts=raw["timeouts"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 3),
    )


def run_wrk(
    name: str,
    base_url: str,
    repeated: Path,
    seconds: float,
    load: WrkLoad,
    listed: tuple[Path, int] | None = None,
    *,
    until: Callable[[], bool] | None = None,
) -> WrkRound:
    """Run wrk with webhooks.lua: `repeated` over and over, one of `listed` every Nth request;
    ended early (as Ctrl-C ends it, summary printed) once `until` says so."""
    argv = [
        ensure_wrk(), f"-t{load.threads}", f"-c{load.connections}",
        f"-d{max(1, round(seconds))}s", "--timeout", f"{load.timeout_s}s", "--latency",
        "-s", str(WRK_SCRIPT), base_url, "--", str(repeated),
    ]  # fmt: skip
    if listed is not None:
        argv += [str(listed[0]), str(listed[1]), str(load.threads)]
    with subprocess.Popen(  # noqa: S603 - argv built here
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        if until is not None:
            interrupt_when(process, until, seconds)
        stdout, stderr = process.communicate(timeout=seconds + 60)
    if process.returncode != 0:
        raise BenchError(f"wrk failed ({process.returncode}) for {name}: {stderr[-2000:]}")
    measured = parse_wrk(name, stdout)
    if measured.errors:
        raise BenchError(f"{name}: {measured.errors} wrk requests failed or answered non-2xx")
    return measured


def interrupt_when(
    process: subprocess.Popen[str], until: Callable[[], bool], seconds: float
) -> None:
    """SIGINT wrk once `until()` holds: it stops and prints its summary of the time it ran."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        if until():
            process.send_signal(signal.SIGINT)
            return
        time.sleep(0.2)


def drift_ratios(hello: Sequence[float], measured: Sequence[float]) -> list[float]:
    """Each measured figure over the mean of the hello figures just before and after it
    (rounds run hello, measured, hello, measured, ..., hello)."""
    if len(hello) != len(measured) + 1:
        raise ValueError("hello rounds must surround every measured round")
    return [value / ((hello[i] + hello[i + 1]) / 2) for i, value in enumerate(measured)]


# --- the stack and the floor ---------------------------------------------------------------------


def bench_config(
    workdir: Path, *, max_in_flight: int, reconcile_grace_seconds: float = 60
) -> StackConfig:
    """The benchmark's local stack: one worker of two processes, no Flower, no Redis AOF."""
    return StackConfig(
        workdir=workdir,
        bucket=BUCKET,
        redis_aof=False,
        emulator_key="bench-key",
        workers=("bench",),
        concurrency=2,
        flower=False,
        reconcile_grace_seconds=reconcile_grace_seconds,
        extra_env={
            "RUNWARE_MAX_IN_FLIGHT": str(max_in_flight),
            "LOG_LEVEL": "WARNING",
            # Limits far above the load, so each request pays for its check but none is refused.
            "API_RATE_LIMIT": "100000/second",
            "TENANT_DAILY_IMAGES": "10000000",
            "TENANT_DAILY_SPEND_USD": "10000000",
            "GLOBAL_DAILY_SPEND_USD": "10000000",
        },
    )


def start_hello(stack: LocalStack) -> Service:
    """The hello-world app under gunicorn with the receiver's own settings file and env."""

    def build(port: int) -> ManagedProcess:
        argv = [venv_bin("gunicorn"), "-c", "python:webhooks.gunicorn_conf",
                "-b", f"127.0.0.1:{port}", "infra.bench.hello:create_app()"]  # fmt: skip
        return ManagedProcess(
            "hello", argv, log_dir=stack.log_dir, env=child_env(stack.env), cwd=REPO_ROOT
        )

    def ready(process: ManagedProcess, port: int) -> None:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", 30, process=process)

    process, port = start_listening(build, ready, None)
    return Service(process, f"http://127.0.0.1:{port}", port)


@dataclass
class Bench:
    """A running stack with its hello-world floor, and clients to drive them."""

    stack: LocalStack
    hello: Service
    api: httpx.Client
    emulator: httpx.Client
    service: JobService  # the pipeline's use cases in this process, sending no Celery message

    @property
    def receiver_url(self) -> str:
        return self.stack.urls["RECEIVER_URL"]

    @property
    def hello_url(self) -> str:
        return self.hello.url or ""


@contextmanager
def running_bench(config: StackConfig) -> Iterator[Bench]:
    """Start the stack and the floor; stop both however the block ends."""
    stack = LocalStack(config, say=say)
    hello: Service | None = None
    try:
        stack.start()
        hello = start_hello(stack)
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with (
            httpx.Client(base_url=stack.urls["RECEIVER_URL"], headers=headers, timeout=30) as api,
            httpx.Client(base_url=stack.urls["EMULATOR_URL"], timeout=30) as emulator,
        ):
            yield Bench(stack, hello, api, emulator, in_process_service(stack))
    finally:
        if hello is not None:
            hello.stop()
        stack.stop()


class NoNudges:
    """A dispatcher that sends nothing: the in-process submission needs no worker."""

    def submit_job(self, job_id: str, countdown: float = 0) -> None:
        return None

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None:
        return None

    def notify_job(self, job_id: str) -> None:
        return None

    def queue_lengths(self) -> dict[str, int]:
        return {}


def in_process_service(stack: LocalStack) -> JobService:
    """The pipeline's use cases over the stack's Redis, S3 and emulator, in this process."""
    # boto3 reads its credentials from the environment, as it does in the stack's processes.
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("AWS_")})
    return build_service(Settings.from_env(stack.env), dispatcher=NoNudges())


# --- a stored image and its webhook --------------------------------------------------------------


def run_one_job(bench: Bench, timeout: float = 60) -> dict[str, Any]:
    """One image through the whole stack (API, worker, emulator, receiver); its job view."""
    answer = bench.api.post("/v1/jobs", json={**JOB_REQUEST, "numberResults": 1})
    answer.raise_for_status()
    job_id = answer.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = bench.api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in JOB_TERMINAL:
            if job["state"] != JobState.SUCCEEDED:
                raise BenchError(f"the sample job ended {job['state']}: {job.get('reason')}")
            return job
        time.sleep(0.1)
    raise BenchError(f"the sample job {job_id} did not end within {timeout:.0f}s")


def emulator_body(item: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The success webhook body the emulator sends for an item under its config."""
    body = dict(item)
    if config.get("webhook_status_field"):
        body["status"] = "success"
    return body if config.get("envelope") == "flat" else {"data": [body]}


@dataclass(frozen=True)
class Delivered:
    """What the emulator delivered for a task: its webhook URL, item and webhook body."""

    task_uuid: str
    webhook_url: str
    upload_endpoint: str
    item: dict[str, Any]


def delivered(bench: Bench, task_uuid: str) -> Delivered:
    task = bench.emulator.get(f"/_emulator/tasks/{task_uuid}").json()
    return Delivered(
        task_uuid=task_uuid,
        webhook_url=task["webhookURL"],
        upload_endpoint=task["uploadEndpoint"],
        item=task["slots"][0]["item"] or {},
    )


def emulator_config(bench: Bench) -> dict[str, Any]:
    config: dict[str, Any] = bench.emulator.get("/_emulator/config").json()
    return config


def duplicate_webhook(bench: Bench) -> tuple[WrkRequest, bytes]:
    """The exact webhook of an image already stored, and the stored image's bytes."""
    job = run_one_job(bench)
    slot = job["slots"][0]
    sent = delivered(bench, slot["taskUUID"])
    if sent.item.get("taskUUID") != slot["taskUUID"]:
        raise BenchError("the emulator holds no delivered item for the sample task")
    stored = bench.stack.s3_client().get_object(Bucket=BUCKET, Key=slot["finalKey"])
    body = emulator_body(sent.item, emulator_config(bench))
    return webhook_request(sent.webhook_url, body), stored["Body"].read()


# --- images awaiting their result ----------------------------------------------------------------


def hold_deliveries(bench: Bench) -> None:
    """From now on the emulator renders nothing within the benchmark: every task stays in flight."""
    bench.emulator.patch("/_emulator/config", json={"latency_ms": NEVER_MS}).raise_for_status()


def job_sizes(images: int) -> list[int]:
    """Jobs of 20 images (one Runware request each), and one smaller for the rest."""
    sizes = [IMAGES_PER_JOB] * (images // IMAGES_PER_JOB)
    return sizes + ([images % IMAGES_PER_JOB] if images % IMAGES_PER_JOB else [])


def submit_jobs(service: JobService, sizes: Sequence[int], threads: int) -> list[str]:
    """Create and submit one job per size; their ids."""

    def one(count: int) -> str:
        job, _created = service.create_job({**JOB_REQUEST, "numberResults": count}, TENANT)
        outcome = service.submit_job(job.id)
        if outcome != SubmitOutcome.SUBMITTED:
            raise BenchError(f"job {job.id} was not submitted: {outcome}")
        return job.id

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, sizes))


def seed_in_flight(bench: Bench, images: int) -> list[str]:
    """Put `images` images in flight, sent to the emulator and awaiting their results, through
    the pipeline's own use cases in this process: JobService.create_job (validation, the job
    and slot records) then JobService.submit_job (taskUUIDs, leases, presigned upload URLs, one
    imageInference request per job of up to 20 tasks, slots moved to submitted), i.e. what the
    API and the worker's submit task do, without the Celery hop. The job ids."""
    return submit_jobs(bench.service, job_sizes(images), threads=4)


def awaiting_tasks(bench: Bench, job_ids: Iterable[str]) -> list[str]:
    """The taskUUIDs of the jobs' images sent and awaiting their result."""
    tasks: list[str] = []
    for job_id in job_ids:
        job = bench.service.store.get_job(job_id)
        slots = job.slots if job else []
        tasks += [s.task_uuid for s in slots if s.state == SlotState.SUBMITTED and s.task_uuid]
    return tasks


def fresh_item(template: dict[str, Any], task_uuid: str, image_uuid: str) -> dict[str, Any]:
    """A result item like `template` for another task and image."""
    item = {**template, "taskUUID": task_uuid, "imageUUID": image_uuid}
    if "imageURL" in template:
        item["imageURL"] = str(template["imageURL"]).replace(template["imageUUID"], image_uuid)
    return item


def fresh_results(
    bench: Bench, task_uuids: Sequence[str], template: dict[str, Any], image: bytes
) -> list[WrkRequest]:
    """For each task, its image PUT to the task's upload URL (as Runware does before its
    webhook), and the first-result webhook wrk will send for it."""
    config = emulator_config(bench)

    def one(task_uuid: str) -> WrkRequest:
        sent = delivered(bench, task_uuid)
        put = bench.emulator.put(
            sent.upload_endpoint, content=image, headers={"Content-Type": "image/jpeg"}
        )
        put.raise_for_status()
        item = fresh_item(template, task_uuid, str(uuid.uuid4()))
        return webhook_request(sent.webhook_url, emulator_body(item, config))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, task_uuids))


def stored_between(bench: Bench, job_ids: Iterable[str], start: float, end: float) -> int:
    """Images of the jobs stored (by their slot's stored_at) within [start, end]."""
    total = 0
    for job_id in job_ids:
        job = bench.service.store.get_job(job_id)
        for slot in job.slots if job else []:
            total += slot.state == SlotState.STORED and start <= (slot.stored_at or 0) <= end
    return total


def redis_calls(bench: Bench) -> dict[str, int]:
    """Calls of each Redis command so far (INFO commandstats)."""
    client = redis.Redis.from_url(bench.stack.env["REDIS_URL"])
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def calls_per_request(
    before: dict[str, int], after: dict[str, int], requests: int
) -> dict[str, float]:
    """Redis calls per request of a round, by command, largest first, with their total. Every
    client counts (workers and beat too): a round's own share dominates at these rates."""
    if requests <= 0:
        return {}
    used = {name: after[name] - before.get(name, 0) for name in after}
    rows = sorted(((n, c / requests) for n, c in used.items() if c > 0), key=lambda r: -r[1])
    per: dict[str, float] = {"total": round(sum(c for _, c in rows), 2)}
    per.update((name, round(count, 2)) for name, count in rows)
    return per


# --- the phase -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """The request files wrk reads."""

    duplicate: Path
    hello: Path
    fresh: Path
    redis_floor: Path


def fresh_round(bench: Bench, files: Files, seconds: float, load: WrkLoad) -> WrkRound:
    """wrk sends each fresh result once, ended early once none is awaited any more."""
    return run_wrk(
        "fresh", bench.receiver_url, files.duplicate, seconds, load, (files.fresh, 1),
        until=lambda: bench.service.context.budget.in_use() == 0,
    )  # fmt: skip


def prepare(bench: Bench, directory: Path, fresh_images: int) -> tuple[Files, list[str]]:
    """The duplicate webhook, the hello request, and fresh results staged for wrk."""
    duplicate, image = duplicate_webhook(bench)
    template = json.loads(duplicate.body)["data"][0]
    hold_deliveries(bench)
    began = time.monotonic()
    job_ids = seed_in_flight(bench, fresh_images)
    fresh = fresh_results(bench, awaiting_tasks(bench, job_ids), template, image)
    say(f"{len(fresh)} fresh results staged in {time.monotonic() - began:.1f}s")
    files = Files(
        duplicate=write_requests(directory / "duplicate.txt", [duplicate]),
        # The floor gets the same bytes on the same path: only the handler differs.
        hello=write_requests(directory / "hello.txt", [duplicate]),
        redis_floor=write_requests(
            directory / "redis_floor.txt",
            [WrkRequest(REDIS_FLOOR + duplicate.path, duplicate.body)],
        ),
        fresh=write_requests(directory / "fresh.txt", fresh),
    )
    return files, job_ids


def cpu_seconds(bench: Bench) -> dict[str, float]:
    """CPU seconds (user and system) used so far by each process of the stack and the floor,
    each with its children."""
    services = {**bench.stack.services, "hello": bench.hello}
    return {name: tree_cpu(service.process.pid) for name, service in services.items()}


def tree_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in tree:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def cores_busy(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Each process's CPU between two readings, in cores (CPU seconds per second)."""
    if seconds <= 0:
        return {}
    return {name: round((after[name] - before.get(name, 0.0)) / seconds, 2) for name in after}


def cpu_ms_per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """Each process's CPU per request of a round, in ms; processes that did nothing left out.
    Unlike a rate, it holds while other work on the machine takes the CPU away."""
    if requests <= 0:
        return {}
    used = {name: (after[name] - before.get(name, 0.0)) * 1000 / requests for name in after}
    return {name: round(ms, 3) for name, ms in used.items() if ms >= 0.01}


@dataclass
class Rounds:
    """The receiver phase's wrk rounds, with the Redis calls per request of each measured one
    and the CPU per request of each process in every round."""

    hello: list[WrkRound] = field(default_factory=list)
    redis_floor: list[WrkRound] = field(default_factory=list)
    duplicate: list[WrkRound] = field(default_factory=list)
    fresh: list[WrkRound] = field(default_factory=list)
    fresh_stored: int = 0
    redis_per_request: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_per_request: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def cpu_ms(self, name: str, process: str) -> float:
        """The mean CPU per request of `process` over the rounds called `name`."""
        rows = self.cpu_per_request.get(name, [])
        return statistics.fmean(row.get(process, 0.0) for row in rows) if rows else 0.0


def counted(bench: Bench, rounds: Rounds, run: Callable[[], WrkRound]) -> WrkRound:
    """Run a round, counting the CPU each process spent on it and, against the receiver,
    the Redis calls it caused."""
    calls, cpu = redis_calls(bench), cpu_seconds(bench)
    measured = run()
    rounds.cpu_per_request.setdefault(measured.name, []).append(
        cpu_ms_per_request(cpu, cpu_seconds(bench), measured.requests)
    )
    if measured.name != "hello":
        rounds.redis_per_request.setdefault(
            measured.name, calls_per_request(calls, redis_calls(bench), measured.requests)
        )
    return measured


def interleaved_rounds(
    bench: Bench, files: Files, job_ids: list[str], seconds: float, load: WrkLoad
) -> Rounds:
    """hello, redis floor, duplicate, hello, fresh, hello, duplicate, redis floor, hello."""
    rounds = Rounds()

    def hello() -> WrkRound:
        return run_wrk("hello", bench.hello_url, files.hello, seconds, load)

    def floor() -> None:
        rounds.hello.append(counted(bench, rounds, hello))

    def redis_floor() -> None:
        measured = run_wrk("redis_floor", bench.hello_url, files.redis_floor, seconds, load)
        rounds.redis_floor.append(measured)

    def duplicate() -> WrkRound:
        return run_wrk("duplicate", bench.receiver_url, files.duplicate, seconds, load)

    def fresh() -> WrkRound:
        return fresh_round(bench, files, seconds, load)

    floor()
    redis_floor()
    rounds.duplicate.append(counted(bench, rounds, duplicate))
    floor()
    start = time.time()
    rounds.fresh.append(counted(bench, rounds, fresh))
    # Counted from the store, not from wrk: a result sent twice would be a duplicate.
    rounds.fresh_stored = stored_between(bench, job_ids, start, start + rounds.fresh[0].seconds)
    floor()
    rounds.duplicate.append(counted(bench, rounds, duplicate))
    redis_floor()
    floor()
    return rounds


def cpu_ratio(rounds: Rounds) -> float | None:
    """The floor's CPU per request over the receiver's on the duplicate path: what
    receiver_ratio would be if each had the CPU to itself."""
    duplicate = rounds.cpu_ms("duplicate", "receiver")
    return round(rounds.cpu_ms("hello", "hello") / duplicate, 3) if duplicate else None


def receiver_figures(rounds: Rounds, listed: int) -> dict[str, Any]:
    """The phase's figures: rates, each measured round against the hello rounds around it,
    the redis floor and the duplicate rounds beside it, latencies."""
    hello, duplicate, fresh = rounds.hello, rounds.duplicate, rounds.fresh[0]
    floors = rounds.redis_floor
    fresh_rps = rounds.fresh_stored / fresh.seconds if fresh.seconds else 0.0
    ratios = drift_ratios([r.rps for r in hello], [duplicate[0].rps, fresh_rps, duplicate[1].rps])
    dup_ratios = [ratios[0], ratios[2]]
    order = [
        hello[0], floors[0], duplicate[0], hello[1], fresh, hello[2], duplicate[1], floors[1],
        hello[3],
    ]  # fmt: skip
    # Each redis floor round sits between a hello round and a duplicate round.
    floor_ratios = [floors[0].rps / hello[0].rps, floors[1].rps / hello[3].rps]
    to_floor = [duplicate[0].rps / floors[0].rps, duplicate[1].rps / floors[1].rps]
    return {
        "hello_rps": round(statistics.fmean(r.rps for r in hello), 1),
        "duplicate_rps": round(statistics.fmean(r.rps for r in duplicate), 1),
        "fresh_rps": round(fresh_rps, 1),
        "receiver_ratio": round(statistics.fmean(dup_ratios), 3),
        "duplicate_ratios": [round(r, 3) for r in dup_ratios],
        "redis_floor_rps": round(statistics.fmean(r.rps for r in floors), 1),
        "redis_floor_ratio": round(statistics.fmean(floor_ratios), 3),
        "duplicate_to_redis_floor": round(statistics.fmean(to_floor), 3),
        "fresh_ratio": round(ratios[1], 3),
        "fresh_stored": rounds.fresh_stored,
        "fresh_listed": listed,
        "hello_p99_ms": round(statistics.fmean(r.p99_ms for r in hello), 2),
        "duplicate_p50_ms": round(statistics.fmean(r.p50_ms for r in duplicate), 2),
        "duplicate_p99_ms": round(statistics.fmean(r.p99_ms for r in duplicate), 2),
        "fresh_p50_ms": fresh.p50_ms,
        "fresh_p99_ms": fresh.p99_ms,
        "receiver_cpu_ratio": cpu_ratio(rounds),
        "cpu_ms_per_request": {
            "hello": round(rounds.cpu_ms("hello", "hello"), 3),
            "duplicate": round(rounds.cpu_ms("duplicate", "receiver"), 3),
            "fresh": rounds.cpu_per_request["fresh"][0],
        },
        "redis_calls_per_request": rounds.redis_per_request,
        "rounds": [r.figures() for r in order],
    }


def measure_receiver(
    workdir: Path,
    *,
    seconds: float = 6.0,
    fresh_images: int = 300,
    load: WrkLoad | None = None,
) -> dict[str, Any]:
    """The receiver phase on a stack of its own in workdir: `seconds` per wrk round."""
    load = load or WrkLoad()
    ensure_wrk()
    began = time.monotonic()
    config = bench_config(workdir, max_in_flight=fresh_images + 100)
    with running_bench(config) as bench:
        files, job_ids = prepare(bench, workdir, fresh_images)
        rounds = interleaved_rounds(bench, files, job_ids, seconds, load)
    figures = receiver_figures(rounds, fresh_images)
    figures.update(
        wrk={"threads": load.threads, "connections": load.connections, "seconds": seconds},
        phase_seconds=round(time.monotonic() - began, 1),
    )
    return figures


def summary_line(figures: dict[str, Any]) -> str:
    return (
        f"receiver: hello_rps={figures['hello_rps']} duplicate_rps={figures['duplicate_rps']} "
        f"fresh_rps={figures['fresh_rps']} receiver_ratio={figures['receiver_ratio']} "
        f"redis_floor_ratio={figures['redis_floor_ratio']} "
        f"duplicate_to_redis_floor={figures['duplicate_to_redis_floor']} "
        f"receiver_cpu_ratio={figures['receiver_cpu_ratio']} "
        f"duplicate_p99_ms={figures['duplicate_p99_ms']} fresh_p99_ms={figures['fresh_p99_ms']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.bench.receiver", description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each wrk round")
    parser.add_argument("--fresh-images", type=int, default=300, help="fresh results staged")
    parser.add_argument("--threads", type=int, default=WrkLoad.threads, help="wrk threads")
    parser.add_argument("--connections", type=int, default=WrkLoad.connections)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    load = WrkLoad(threads=args.threads, connections=args.connections)
    return run_alone("receiver", args.workdir, summary_line, lambda workdir: measure_receiver(
        workdir, seconds=args.seconds, fresh_images=args.fresh_images, load=load))  # fmt: skip


def run_alone(
    phase: str,
    workdir: Path | None,
    summary: Callable[[dict[str, Any]], str],
    measure: Callable[[Path], dict[str, Any]],
) -> int:
    """A phase run on its own: its figures as JSON, then its summary line."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"imagine-bench-{phase}-"))
    try:
        figures = measure(workdir)
    except BenchError as exc:
        print(f"bench: {phase} phase failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2))
    print(summary(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
