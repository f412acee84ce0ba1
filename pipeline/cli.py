"""The `imagine` command: submit and follow jobs through the jobs API, operate the pipeline
through Redis, run the local stack."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from imagine_client import (
    Client,
    ConnectionFailed,
    DayStats,
    ImagineError,
    Job,
    RetryPolicy,
    Slot,
    SlotAttempt,
)
from imagine_client.models import JOB_STATES
from pipeline.config import SettingsError
from pipeline.errors import PipelineError
from pipeline.secrets import redact_url

if TYPE_CHECKING:
    import httpx

    from pipeline.services import JobService

STACK_ENV = Path(".run") / "stack.env"
ENVIRONMENT = "the environment"  # where settings come from unless a stack.env is read
API_URL, API_KEY = "IMAGINE_API_URL", "IMAGINE_API_KEY"
CONNECTION_VARIABLES = (API_URL, API_KEY, "REDIS_URL")
# --wait polls after 0.5 s, doubling the pause to 2 s, back to 0.5 s at each change it shows.
POLL, POLL_CAP = 0.5, 2.0
DIRECT_TENANT = "cli"  # the tenant of a job submitted through Redis without --tenant
# A person waits at the prompt: one retry fewer than a service's client makes.
RETRY = RetryPolicy(attempts=3)

NO_SETTINGS = (
    "no connection settings: set IMAGINE_API_URL and IMAGINE_API_KEY (or --api-url and "
    "--api-key) to use the jobs API, or REDIS_URL for the operator commands; `make run` "
    f"starts a local stack and writes both to {STACK_ENV}, which imagine reads from there"
)
NO_REDIS = (
    "{what} reads Redis directly: set REDIS_URL (with the pipeline's other settings), or run "
    f"imagine where `make run` wrote {STACK_ENV}"
)


class UsageError(Exception):
    """Something the user fixes (a setting, an argument, an unreachable service): one line."""


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Connection:
    """Where this invocation's settings came from and what they say."""

    environ: Mapping[str, str]
    origin: str  # ENVIRONMENT, or the stack.env file read in its place
    api_url: str | None
    api_key: str | None

    @property
    def redis_url(self) -> str | None:
        return self.environ.get("REDIS_URL") or None

    def hint(self) -> str:
        if self.origin == ENVIRONMENT:
            return ""
        return "; is the stack that wrote it still running? (make run starts one)"


def find_stack_env(cwd: Path) -> Path | None:
    """The .run/stack.env of `make run` in cwd or the nearest directory above it."""
    for directory in (cwd, *cwd.parents):
        candidate = directory / STACK_ENV
        if candidate.is_file():
            return candidate
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of a shell env file (quoted as the stack writes them)."""
    try:
        words = shlex.split(path.read_text(), comments=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return dict(word.split("=", 1) for word in words if "=" in word)


def connect(args: argparse.Namespace, environ: Mapping[str, str], cwd: Path) -> Connection:
    """The flags, else the environment; when neither names a service, the local stack's
    .run/stack.env (whole: never a mix of two stacks' settings)."""
    env = dict(environ)
    origin = ENVIRONMENT
    named = args.api_url or args.api_key or any(env.get(name) for name in CONNECTION_VARIABLES)
    found = None if named else find_stack_env(cwd)
    if found is not None:
        env.update(read_env_file(found))
        origin = os.path.relpath(found, cwd) if found.is_relative_to(cwd) else str(found)
    return Connection(
        environ=env,
        origin=origin,
        api_url=args.api_url or env.get(API_URL) or None,
        api_key=args.api_key or env.get(API_KEY) or None,
    )


@dataclass
class Invocation:
    """One run of the command: its arguments, its settings and (in tests) an HTTP client."""

    args: argparse.Namespace
    conn: Connection
    http: httpx.Client | None = None

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def over_api(self) -> bool:
        """Whether a tenant's command goes through the jobs API (else Redis, for operators)."""
        if getattr(self.args, "tenant", None) is not None or getattr(self.args, "direct", False):
            if not self.conn.redis_url:
                raise UsageError(
                    "--tenant and --direct read Redis directly and need REDIS_URL; through "
                    "the jobs API the tenant is always the API key's"
                )
            return False
        if self.conn.api_url:
            return True
        if self.conn.redis_url:
            return False
        raise UsageError(NO_SETTINGS)

    def client(self) -> Client:
        url, key = self.conn.api_url, self.conn.api_key
        if not url:
            raise UsageError(f"{self.args.command} needs the jobs API: " + NO_SETTINGS)
        if not key:
            raise UsageError(f"{API_URL} is {url} but there is no API key: set {API_KEY}")
        try:
            return Client(url, key, http=self.http, retry=RETRY)
        except ValueError as exc:
            raise UsageError(f"{API_URL} from {self.conn.origin}: {exc}") from None

    def unreachable(self, exc: ConnectionFailed) -> UsageError:
        reason = str(exc.__cause__ or "") or exc.message
        return UsageError(
            f"cannot reach the jobs API at {self.conn.api_url} ({API_URL} from "
            f"{self.conn.origin}): {reason}{self.conn.hint()}"
        )

    def with_service(self, what: str, action: Callable[[JobService], int]) -> int:
        """Run action on the pipeline's use cases over Redis; an unreachable Redis is one line."""
        redis_url = self.conn.redis_url
        if redis_url is None:
            raise UsageError(NO_REDIS.format(what=what))
        # Imported here: the commands that use the jobs API start without the pipeline's
        # clients (redis, boto3, Celery) and their import time.
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from pipeline.config import Settings
        from pipeline.wiring import build_service

        if self.conn.origin != ENVIRONMENT:
            # boto3 takes credentials from the process's environment: the stack's file stands
            # in for `set -a; . .run/stack.env`, which would have put them there.
            os.environ.update({k: v for k, v in self.conn.environ.items() if k.startswith("AWS_")})
        service = build_service(Settings.from_env(self.conn.environ))
        try:
            return action(service)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise UsageError(
                f"cannot reach Redis at {redact_url(redis_url)} (REDIS_URL from "
                f"{self.conn.origin}): {str(exc).rstrip('.')}{self.conn.hint()}"
            ) from None


# ------------------------------------------------------------------ output


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows under their headers, each column as wide as its widest cell (the last one is not
    padded, so no line ends in spaces); numbers are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if _numeric(cell) else cell.ljust(width)
            for cell, width in zip(cells, widths, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _numeric(cell: str) -> bool:
    return cell.lstrip("+-$").replace(".", "", 1).isdigit()


def _seconds(seconds: float) -> str:
    """A duration as an operator reads it: 0.4s, 12.0s, 3m05s, 2h10m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _after(when: datetime | None, origin: datetime | None) -> str:
    """A time as its distance from `origin` (the job's creation): +1.2s; - when unknown."""
    if when is None:
        return "-"
    if origin is None:
        return when.isoformat()
    delta = (when - origin).total_seconds()
    return ("+" if delta >= 0 else "-") + _seconds(abs(delta))


def _iso(when: datetime | None) -> str:
    return "-" if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _usd(amount: float | None) -> str:
    return "-" if amount is None else f"${amount:.4f}"


ATTEMPT_HEADERS = (
    "slot", "attempt", "state", "code", "taskUUID", "model", "submitted", "received", "ended",
)  # fmt: skip


def attempt_rows(job: Job) -> list[list[str]]:
    """Each image's attempts, oldest first: the retired ones from its history, then the
    current one. Times count from the job's creation."""
    origin = job.created_at
    rows = []
    for slot in job.slots:
        known = {entry.task_uuid for entry in slot.history}
        # A taskUUID retired before the history was kept: its details are gone.
        earlier = [
            SlotAttempt(attempt=0, task_uuid=task)
            for task in slot.previous_task_uuids
            if task not in known
        ]
        for entry in [*earlier, *slot.history]:
            rows.append(
                [
                    str(slot.slot),
                    str(entry.attempt or "?"),
                    entry.state or "?",
                    entry.code or "-",
                    entry.task_uuid,
                    entry.model or "-",
                    _after(entry.submitted_at, origin),
                    _after(entry.received_at, origin),
                    _after(entry.ended_at, origin),
                ]
            )
        code = slot.error.code if slot.error is not None else "-"
        ended = slot.stored_at if slot.stored else (slot.updated_at if slot.ended else None)
        rows.append(
            [
                str(slot.slot),
                str(slot.attempt or "?"),
                slot.state,
                code,
                slot.task_uuid or "-",
                slot.model or "-",
                _after(slot.submitted_at, origin),
                _after(slot.received_at, origin),
                _after(ended, origin),
            ]
        )
    return rows


def describe(job: Job) -> list[str]:
    """A job for the on-call: what it is, how it ended, then each image's attempts."""
    took = ""
    if job.ended_at is not None and job.created_at is not None:
        took = f" after {_seconds((job.ended_at - job.created_at).total_seconds())}"
    lines = [
        f"job {job.id}  {job.state}{took}" + (f" ({job.reason})" if job.reason else ""),
        f"tenant {job.tenant or '-'}  model {job.model or '-'}  "
        f"{job.stored}/{len(job.slots)} stored  cost {_usd(job.cost)}",
        f"created {_iso(job.created_at)}  ended {_iso(job.ended_at)}  "
        f"deadline {_iso(job.deadline_at)}",
        "",
    ]
    return lines + table(ATTEMPT_HEADERS, attempt_rows(job))


STATS_HEADERS = (
    "day", "tenant", "created", "succeeded", "partial", "failed", "cancelled", "timed_out",
    "stored", "img_failed", "spend", "reserved",
)  # fmt: skip


def _stats_row(
    day: str, tenant: str, counts: Sequence[int], spend: float, reserved: str
) -> list[str]:
    return [day, tenant, *(str(count) for count in counts), f"${spend:.4f}", reserved]


# The end states in the order of STATS_HEADERS.
ENDED_COLUMNS = ("succeeded", "partially_succeeded", "failed", "cancelled", "timed_out")


def _day_counts(day: DayStats) -> list[int]:
    ended = [day.ended.get(state, 0) for state in ENDED_COLUMNS]
    return [day.created, *ended, day.images_stored, day.images_failed]


def stats_lines(days: Sequence[DayStats]) -> list[str]:
    """Each tenant's days as a table, with a total row when there are several rows."""
    rows = []
    for day in days:
        reserved = (
            "-"
            if day.reserved_images is None
            else f"{day.reserved_images} img {_usd(day.reserved_spend_usd)}"
        )
        rows.append(_stats_row(day.day, day.tenant, _day_counts(day), day.spend_usd, reserved))
    if len(days) > 1:
        totals = [sum(column) for column in zip(*(_day_counts(day) for day in days), strict=True)]
        spend = sum(day.spend_usd for day in days)
        rows.append(_stats_row("total", "", totals, spend, ""))
    return table(STATS_HEADERS, rows)


def _slot_detail(slot: Slot) -> str:
    if slot.stored and slot.width:
        return f" ({slot.width}x{slot.height} {slot.format})"
    if slot.error is not None:
        return f" ({slot.error.code}: {slot.error.message})"
    return ""


def changes(job: Job, before: Job | None) -> list[str]:
    """What changed in a job since `before`, one line per job state and per image state."""
    if before is None:
        return [f"job {job.id}: {job.state}, {len(job.slots)} image(s)"]
    old = {slot.slot: slot.state for slot in before.slots}
    images = [
        f"job {job.id} image {slot.slot}: {old.get(slot.slot, 'new')} -> "
        f"{slot.state}{_slot_detail(slot)}"
        for slot in job.slots
        if slot.state != old.get(slot.slot)
    ]
    if job.state == before.state:
        return images
    reason = f" ({job.reason})" if job.reason and job.ended else ""
    line = f"job {job.id}: {before.state} -> {job.state}{reason}"
    # A job starts before its images move, and ends after the last one has.
    return [*images, line] if job.ended else [line, *images]


def summary(job: Job, elapsed: float) -> str:
    """A job on one terminal line: the start of its id (the whole one is printed as it is
    submitted), its state, images stored, seconds waited, then each image's state (what a
    narrow terminal cuts off first)."""
    images = " ".join(f"{slot.slot}:{slot.state}" for slot in job.slots)
    return (
        f"{job.id[:8]}  {job.state:<19} {job.stored}/{len(job.slots)} stored  "
        f"{elapsed:4.0f}s  {images}"
    )


class Progress:
    """What --wait shows on stderr. On a terminal, one line per job, redrawn in place; anywhere
    else (a pipe, a file, a CI log) one line per change of a job's or an image's state, so the
    output reads as a history and never as one endless line."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.clock = clock
        self.started = clock()
        self.seen: dict[str, Job] = {}
        self.drawn = 0

    def show(self, jobs: Sequence[Job]) -> None:
        if self.tty:
            self._redraw(jobs)
            return
        for job in jobs:
            for line in changes(job, self.seen.get(job.id)):
                print(line, file=self.stream, flush=True)
            self.seen[job.id] = job

    def _redraw(self, jobs: Sequence[Job]) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        elapsed = self.clock() - self.started
        lines = [summary(job, elapsed)[:width] for job in jobs]
        # Back to the first line drawn last time (ESC [n F), then each line over its old text.
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "".join(f"{line}\x1b[K\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)


def _signature(jobs: Sequence[Job]) -> list[tuple[str, tuple[str, ...]]]:
    return [(job.state, tuple(slot.state for slot in job.slots)) for job in jobs]


def wait_for(
    jobs: Sequence[Job],
    get: Callable[[str], Job],
    progress: Progress,
    timeout: float | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[Job]:
    """Poll every job until all have ended or `timeout` passes; show each change."""
    current = list(jobs)
    deadline = None if timeout is None else clock() + timeout
    pause = POLL
    progress.show(current)
    while not all(job.ended for job in current):
        left = None if deadline is None else deadline - clock()
        if left is not None and left <= 0:
            break
        sleep(pause if left is None else min(pause, left))
        fresh = [job if job.ended else get(job.id) for job in current]
        pause = POLL if _signature(fresh) != _signature(current) else min(pause * 2, POLL_CAP)
        current = fresh
        progress.show(current)
    return current


# ------------------------------------------------------------------ submit


def _unwrap(entry: Any) -> Any:
    """A model page example (`{"request": ..., "response": ...}`) is its request."""
    if isinstance(entry, dict) and isinstance(entry.get("request"), dict):
        if "positivePrompt" not in entry:
            return entry["request"]
    return entry


def read_requests(source: str, example: int | None) -> list[Any]:
    """The requests of a file (or - for stdin): one request, or a JSON array of them, each a
    request or a model page example; `example` picks one of an array (from 0)."""
    try:
        if source == "-":
            body = json.load(sys.stdin)
        else:
            with open(source, encoding="utf-8") as handle:
                body = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the request from {source}: {exc}") from None
    if not isinstance(body, list):
        if example is not None:
            raise UsageError(f"--example picks from an array, and {source} holds one request")
        return [_unwrap(body)]
    if not body:
        raise UsageError(f"{source} holds an empty array: no request to submit")
    if example is None:
        return [_unwrap(entry) for entry in body]
    if not 0 <= example < len(body):
        raise UsageError(
            f"--example {example}: {source} holds {len(body)} requests, 0 to {len(body) - 1}"
        )
    return [_unwrap(body[example])]


Create = Callable[[Any, str | None], Job]


def _key(given: str | None, index: int, count: int) -> str | None:
    if given is None or count == 1:
        return given
    return f"{given}-{index}"


def submit_all(run: Invocation, requests: Sequence[Any], create: Create) -> tuple[list[Job], bool]:
    """Submit each request; a refused one is reported and the others still go. Returns the
    jobs and whether every request was accepted."""
    jobs: list[Job] = []
    accepted = True
    for index, request in enumerate(requests):
        try:
            job = create(request, _key(run.args.idempotency_key, index, len(requests)))
        except (ImagineError, PipelineError) as exc:
            if len(requests) == 1:
                raise
            accepted = False
            detail = f" {json.dumps(exc.errors)}" if exc.errors else ""
            run.say(f"imagine: request {index} refused: {exc.code}: {exc.message}{detail}")
            continue
        made = "already exists" if job.replayed else "created"
        run.say(f"job {job.id} {made}" + (f" for tenant {job.tenant}" if job.tenant else ""))
        jobs.append(job)
    return jobs, accepted


def finish_submit(
    run: Invocation, requests: Sequence[Any], create: Create, get: Callable[[str], Job]
) -> int:
    jobs, accepted = submit_all(run, requests, create)
    if run.args.wait and jobs:
        jobs = wait_for(jobs, get, Progress(sys.stderr), run.args.timeout)
        waiting = [job.id for job in jobs if not job.ended]
        if waiting:
            run.say(
                f"imagine: stopped waiting after {run.args.timeout:g} s; still running: "
                f"{' '.join(waiting)} (imagine status <id>)"
            )
    shown = [job.raw for job in jobs]
    _print(shown[0] if len(requests) == 1 and shown else shown)
    if not accepted:
        return 1
    return 0 if not run.args.wait or all(job.succeeded for job in jobs) else 1


def _direct_job(service: JobService, job: Any, replayed: bool = False) -> Job:
    return Job.from_dict(service.job_view(job), replayed=replayed)


def cmd_submit(run: Invocation) -> int:
    args = run.args
    requests = read_requests(args.file, args.example)
    if run.over_api():
        client = run.client()

        def create(request: Any, key: str | None) -> Job:
            return client.submit(request, idempotency_key=key)

        return finish_submit(run, requests, create, client.get)

    def direct(service: JobService) -> int:
        def create(request: Any, key: str | None) -> Job:
            job, created = service.create_job(request, args.tenant or DIRECT_TENANT, key)
            return _direct_job(service, job, replayed=not created)

        return finish_submit(
            run, requests, create, lambda job_id: _direct_job(service, service.get_job(job_id))
        )

    return run.with_service("submit --direct", direct)


# ------------------------------------------------------------------ status, jobs, cancel, download


def cmd_status(run: Invocation) -> int:
    if run.over_api():
        return _show_job(run, run.client().get(run.args.id))
    return run.with_service(
        "status",
        lambda service: _show_job(run, _direct_job(service, service.find_job(run.args.id))),
    )


def _show_job(run: Invocation, job: Job) -> int:
    """The job view as JSON with --json, else the on-call's summary and attempts table."""
    if run.args.json:
        _print(job.raw)
    else:
        print("\n".join(describe(job)))
    return 0


def _show(value: Any) -> int:
    _print(value)
    return 0


def _row(job: Job, tenant: bool = False) -> str:
    owner = f"{job.tenant or '-':<16} " if tenant else ""
    return f"{owner}{job.id}  {job.state:<20} {job.stored}/{len(job.slots)}  {job.reason or ''}"


def _window(run: Invocation) -> str:
    """What --state and --since add to the line that says whose jobs are listed."""
    args = run.args
    return (f" in state {args.state}" if args.state else "") + (
        f" created since {args.since}" if args.since else ""
    )


def _listed(run: Invocation, jobs: Sequence[Job], tenant: bool = False) -> None:
    """At most --limit jobs, one line each (a JSON array of views with --json)."""
    limit = run.args.limit
    if run.args.json:
        _print([job.raw for job in jobs[:limit]])
        return
    for job in jobs[:limit]:
        print(_row(job, tenant=tenant).rstrip())
    if len(jobs) > limit:
        print(f"(more than {limit}: raise --limit)")


def cmd_jobs(run: Invocation) -> int:
    args = run.args
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if run.over_api():
        pages = run.client().list(args.state, page_size=min(args.limit + 1, 200), since=args.since)
        listed = list(itertools.islice(pages, args.limit + 1))
        whose = f"tenant {listed[0].tenant}" if listed else "the API key's tenant"
        run.say(
            f"jobs of {whose} (the API key's){_window(run)}, newest first"
            if listed
            else f"no jobs of {whose}{_window(run)}"
        )
        _listed(run, listed)
        return 0
    if args.state is not None and args.state not in JOB_STATES:
        raise UsageError(
            f"--state {args.state!r} is not a job state: one of {', '.join(JOB_STATES)}"
        )
    return run.with_service("jobs --direct", lambda service: _jobs_direct(run, service))


def _tenants(service: JobService) -> list[str]:
    """Every tenant with a job index in Redis."""
    from pipeline.store import RedisJobStore

    store = service.store
    if not isinstance(store, RedisJobStore):
        raise UsageError("listing every tenant needs the Redis job store; name one with --tenant")
    head, _, tail = store.tenant_key("\0").partition("\0")
    keys = store.redis.scan_iter(match=store.tenant_key("*"))
    names = (key.decode() if isinstance(key, bytes) else str(key) for key in keys)
    return sorted(name[len(head) : len(name) - len(tail)] for name in names)


def _since(text: str | None) -> float | None:
    """--since as a Unix time, parsed here when Redis is read directly."""
    if text is None:
        return None
    from pipeline.stats import parse_since

    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise UsageError(f"--since {exc}") from None


def _jobs_direct(run: Invocation, service: JobService) -> int:
    from pipeline.models import JobState

    args = run.args
    state = JobState(args.state) if args.state else None
    since = _since(args.since)
    tenants = [args.tenant] if args.tenant else _tenants(service)
    every = args.tenant is None
    run.say(
        f"jobs of every tenant ({', '.join(tenants) or 'none yet'}){_window(run)}, newest first"
        if every
        else f"jobs of tenant {args.tenant}{_window(run)}, newest first"
    )
    found = []
    for tenant in tenants:
        jobs, _ = service.list_jobs(tenant, state=state, limit=args.limit + 1, since=since)
        found += [(job.created_at, _direct_job(service, job)) for job in jobs]
    found.sort(key=lambda pair: pair[0], reverse=True)
    _listed(run, [job for _, job in found], tenant=every)
    return 0


def cmd_stats(run: Invocation) -> int:
    from_day = run.args.days
    if run.over_api():
        return _show_stats(run, run.client().stats(from_day))

    def direct(service: JobService) -> int:
        try:
            days = service.daily_stats(from_day, run.args.tenant)
        except ValueError as exc:
            raise UsageError(f"--days: {exc}") from None
        return _show_stats(run, [DayStats.from_dict(day.view()) for day in days])

    return run.with_service("stats --direct", direct)


def _show_stats(run: Invocation, days: Sequence[DayStats]) -> int:
    if run.args.json:
        _print([day.raw for day in days])
        return 0
    whose = f"tenant {run.args.tenant}" if run.args.tenant else "every tenant counted"
    if run.over_api():
        whose = f"tenant {days[0].tenant} (the API key's)" if days else "the API key's tenant"
    run.say(f"counters of {whose}, per UTC day, today first; spend as Runware reported it")
    print("\n".join(stats_lines(days)))
    return 0


def cmd_cancel(run: Invocation) -> int:
    if run.over_api():
        _print(run.client().cancel(run.args.id).raw)
        return 0
    return run.with_service(
        "cancel --direct",
        lambda service: _show(service.job_view(service.cancel_job(run.args.id))),
    )


def cmd_download(run: Invocation) -> int:
    client = run.client()
    job = client.get(run.args.id)
    saved = client.download(job, run.args.directory)
    for path in saved:
        print(path)
    missing = len(job.slots) - len(saved)
    if not job.ended:
        run.say(f"job {job.id} is still {job.state}: {len(saved)} image(s) so far")
    elif missing:
        run.say(f"job {job.id} {job.state}: {missing} of {len(job.slots)} image(s) not stored")
    return 0 if saved else 1


# ------------------------------------------------------------------ operator commands (Redis)


def cmd_retry(run: Invocation) -> int:
    return run.with_service(
        "retry",
        lambda service: _show(
            service.job_view(service.retry_job(run.args.id, run.args.slot or None))
        ),
    )


def _dlq(run: Invocation, service: JobService) -> int:
    if run.args.action == "replay":
        replayed = service.replay_dead_letters(run.args.limit)
        print(f"replayed {len(replayed)} job(s)")
        for job_id in replayed:
            print(job_id)
        return 0
    entries = service.store.dead_letters(run.args.limit)
    for entry in entries:
        print(f"{entry.job_id} slot {entry.slot}  {entry.code}: {entry.message}")
    print(f"{len(entries)} dead-lettered slot(s)")
    return 0


def cmd_dlq(run: Invocation) -> int:
    return run.with_service("dlq", lambda service: _dlq(run, service))


def _counts(done: Any) -> dict[str, Any]:
    """What a reconciler pass did: its fields but the internal ones it keeps out of its repr."""
    return {item.name: getattr(done, item.name) for item in fields(done) if item.repr}


def cmd_reconcile(run: Invocation) -> int:
    return run.with_service("reconcile", lambda service: _show(_counts(service.reconcile())))


def _circuit(run: Invocation, service: JobService) -> int:
    if run.args.action == "reset":
        service.reset_circuit()
        print("circuit closed")
        return 0
    circuit = service.circuit()
    shown: dict[str, Any] = (
        {"state": "open", **asdict(circuit)} if circuit.open else {"state": "closed"}
    )
    shown["models"] = [asdict(paused) for paused in service.model_circuits()]
    _print(shown)
    return 0


def cmd_circuit(run: Invocation) -> int:
    return run.with_service("circuit", lambda service: _circuit(run, service))


def _callbacks(run: Invocation, service: JobService) -> int:
    if run.args.action == "resend":
        print(f"resending {run.args.id} as {service.resend_callback(run.args.id)}")
        return 0
    return _show(service.callback_attempts(run.args.id))


def cmd_callbacks(run: Invocation) -> int:
    return run.with_service("callbacks", lambda service: _callbacks(run, service))


def _pause(run: Invocation, service: JobService) -> int:
    if run.args.command == "resume":
        woken = service.resume_submissions()
        print(f"submission resumed; {woken} held job(s) nudged")
        return 0
    if run.args.command == "pause":
        reason = run.args.reason or "paused by an operator"
        service.pause_submissions(reason)
        print(f"submission paused: {reason} (imagine resume lifts it)")
        return 0
    paused = service.submissions_paused()
    _print({"paused": paused is not None, **(asdict(paused) if paused else {})})
    return 0


def cmd_pause(run: Invocation) -> int:
    return run.with_service(run.args.command, lambda service: _pause(run, service))


def _events(run: Invocation, service: JobService) -> int:
    since = run.args.since or ("$" if run.args.follow else "0")
    for entry_id, event in service.follow_events(since, 5000 if run.args.follow else None):
        print(json.dumps({"id": entry_id, **event}, separators=(",", ":")), flush=True)
    return 0


def cmd_events(run: Invocation) -> int:
    return run.with_service("events", lambda service: _events(run, service))


# ------------------------------------------------------------------ the parser


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--api-url", default=default, help=f"the jobs API's base URL (default: ${API_URL})"
    )
    parser.add_argument(
        "--api-key",
        default=default,
        help=f"the API key (default: ${API_KEY}; prefer it: other users see command lines)",
    )


def _add(
    sub: Any, name: str, func: Callable[[Invocation], int], text: str
) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # Given after the command too; SUPPRESS keeps a value given before it.
    _connection_options(common, argparse.SUPPRESS)
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, parents=[common])
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagine",
        description=__doc__,
        epilog=(
            "Settings: --api-url/--api-key or IMAGINE_API_URL/IMAGINE_API_KEY for the jobs "
            "API; REDIS_URL and the pipeline's settings for the operator commands (dlq, "
            "circuit, reconcile, retry, callbacks, pause, resume, paused, events) and "
            f"--tenant. With none of them, {STACK_ENV} of `make run` is read from this "
            "directory or one above it."
        ),
    )
    _connection_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    submit = _add(sub, "submit", cmd_submit, "submit a request, or each of a JSON array of them")
    submit.add_argument("file", help="a JSON request, an array of them, or - for stdin")
    submit.add_argument("--example", type=int, help="only the N-th request of an array (from 0)")
    submit.add_argument("--idempotency-key", help="with an array, suffixed -0, -1, ...")
    submit.add_argument("--wait", action="store_true", help="wait and show each image's progress")
    submit.add_argument("--timeout", type=float, help="stop waiting after this many seconds")
    submit.add_argument("--tenant", help="submit through Redis as this tenant (operators)")
    status = _add(sub, "status", cmd_status, "show a job and its images' attempts")
    status.add_argument("id")
    jobs = _add(sub, "jobs", cmd_jobs, "list jobs, newest first")
    jobs.add_argument("--state", help=f"only jobs in this state: {', '.join(JOB_STATES)}")
    jobs.add_argument(
        "--since", help="only jobs created since: 30m, 1h, 2d, 1h30m or an ISO 8601 time"
    )
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--tenant", help="through Redis: this tenant's jobs (default: every tenant)")
    stats = _add(sub, "stats", cmd_stats, "jobs, images and spend per tenant and UTC day")
    stats.add_argument("--days", type=int, default=7, help="this many days, today first (1-35)")
    stats.add_argument("--tenant", help="through Redis: this tenant (default: every tenant)")
    cancel = _add(sub, "cancel", cmd_cancel, "cancel a queued or running job")
    cancel.add_argument("id")
    download = _add(sub, "download", cmd_download, "save a job's stored images in a directory")
    download.add_argument("id")
    download.add_argument("directory", type=Path)
    retry = _add(sub, "retry", cmd_retry, "reopen a job's failed or dead slots as new attempts")
    retry.add_argument("id")
    retry.add_argument("--slot", type=int, action="append", help="only this slot (repeatable)")
    dlq = _add(sub, "dlq", cmd_dlq, "list or replay dead-lettered slots")
    dlq.add_argument("action", choices=["list", "replay"], nargs="?", default="list")
    dlq.add_argument("--limit", type=int, default=100)
    for command in (submit, status, jobs, cancel, stats):
        command.add_argument(
            "--direct", action="store_true", help="through Redis even when the jobs API is set"
        )
    for command in (status, jobs, stats):
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add(sub, "reconcile", cmd_reconcile, "run one reconciler pass now")
    callbacks = _add(sub, "callbacks", cmd_callbacks, "show a job's callback attempts, or resend")
    callbacks.add_argument("action", choices=["show", "resend"])
    callbacks.add_argument("id")
    pause = _add(sub, "pause", cmd_pause, "stop sending anything to Runware (jobs wait)")
    pause.add_argument("--reason", help="shown on each waiting job")
    _add(sub, "resume", cmd_pause, "lift the pause; held jobs go on")
    _add(sub, "paused", cmd_pause, "say whether submission is paused, and why")
    events = _add(sub, "events", cmd_events, "print lifecycle events as JSON lines")
    events.add_argument("--follow", action="store_true", help="from now on, waiting for more")
    events.add_argument("--since", help="after this stream id (0: every event still kept)")
    circuit = _add(sub, "circuit", cmd_circuit, "show or reset the account's and models' circuits")
    circuit.add_argument("action", choices=["show", "reset"], nargs="?", default="show")
    for name, text in (
        ("stack", "run the local stack (make run)"),
        ("emulator", "run the Runware emulator"),
    ):
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _exec_module(module: str, args: list[str]) -> int:
    """Run an infra module in place of this process (the pipeline never imports infra)."""
    argv = [sys.executable, "-m", module, *args]
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    return 0  # pragma: no cover


def _report(exc: ImagineError | PipelineError) -> int:
    print(f"imagine: {exc.code}: {exc.message}", file=sys.stderr)
    if exc.errors:
        _print(exc.errors)
    return 1


def main(
    argv: list[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    http: httpx.Client | None = None,
) -> int:
    """The command line; `environ`, `cwd` and `http` stand in for the process's in tests."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in {"stack", "emulator"}:
        return _exec_module(f"infra.{argv[0]}", argv[1:])
    args = build_parser().parse_args(argv)
    run = Invocation(args, Connection({}, ENVIRONMENT, None, None), http)
    try:
        run.conn = connect(args, os.environ if environ is None else environ, cwd or Path.cwd())
        result: int = args.func(run)
        return result
    except ConnectionFailed as exc:
        print(f"imagine: {run.unreachable(exc)}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"imagine: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"imagine: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ImagineError, PipelineError) as exc:
        return _report(exc)
    except KeyboardInterrupt:
        print("\nimagine: interrupted; jobs already submitted go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
