"""The local stack: every pipeline process on this machine, started one way for every caller."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from infra import demo, monitoring, servers, supervise
from infra.supervise import ProcessError, Service
from pipeline.config import Settings
from pipeline.selftest import probe_webhook_path

PORT_VARIABLES = {
    "redis": "STACK_REDIS_PORT",
    "s3": "STACK_S3_PORT",
    "emulator": "STACK_EMULATOR_PORT",
    "receiver": "STACK_RECEIVER_PORT",
    "flower": "STACK_FLOWER_PORT",
    "prometheus": "STACK_PROMETHEUS_PORT",
}
# Against a real provider the examples cost money: they are submitted only when this says so.
SUBMIT_EXAMPLES_VARIABLE = "STACK_SUBMIT_EXAMPLES"
# With a public URL in front of it, the receiver listens where a tunnel usually points.
DEFAULT_PUBLIC_RECEIVER_PORT = 8000
# Written into stack.env: a shell that sourced it is recognised, and its values are not taken
# for the user's own choices by the next stack.
STACK_ENV_MARKER = "STACK_ENV_FILE"
# The settings stack.env holds that a stack would otherwise read as the user's own.
STACK_ENV_SETTINGS = (
    "REDIS_URL", "S3_ENDPOINT_URL", "S3_BUCKET", "S3_PREFIX", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "CALLBACK_SECRET",
)  # fmt: skip
# Settings every pipeline process of the stack gets from the stack, whatever the caller says.
SET_BY_STACK = (
    "CELERY_BROKER_URL", "API_KEYS", "CALLBACK_SECRET", "ALLOW_PRIVATE_URLS",
    "RECONCILE_INTERVAL_SECONDS", "RECONCILE_GRACE_SECONDS", "LOG_FORMAT", "LOG_LEVEL",
    "PROMETHEUS_MULTIPROC_DIR", "WORKER_METRICS_PORT", "WORKER_METRICS_ADDRESS",
    "FLOWER_BASIC_AUTH", "FLOWER_ADDRESS", "FLOWER_PORT",
)  # fmt: skip
MODES = ("local", "external")
# In the workdir: the process groups of the running stack (name, pid, start time), one a line.
RECORDS_FILE = "processes"


class StackError(RuntimeError):
    """The stack cannot start or a part of it failed."""


class ChildDied(StackError):
    """A process of the stack exited on its own."""

    def __init__(self, service: Service) -> None:
        process = service.process
        super().__init__(
            f"{service.name} (pid {process.pid}) exited with code {process.returncode}; "
            f"last lines of {process.log_path}:\n{process.tail(40)}"
        )


class Terminated(BaseException):
    """SIGTERM or SIGHUP asked the stack to stop."""


def is_local_url(url: str) -> bool:
    """Whether url names this machine or a private network, which Runware cannot reach."""
    host = (urlsplit(url).hostname or "").lower()
    if not host or host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified
    )


@dataclass(frozen=True)
class StackConfig:
    """What to start and where; what differs between make run, chaos, bench and the e2e tests."""

    workdir: Path
    log_dir: Path | None = None  # None: workdir/logs
    bucket: str = "imagine-pipeline"
    prefix: str = ""
    region: str = servers.LOCAL_REGION
    redis_url: str | None = None  # None: start a Redis server
    redis_aof: bool = True
    s3_endpoint: str | None = None  # None: start a local S3 server
    emulator_url: str | None = None  # an emulator already running; None: start one if emulated
    emulator_key: str | None = None  # None: a fresh key for this stack
    emulator_args: tuple[str, ...] = ()
    runware_api_url: str | None = None  # None: the provider is the emulator
    runware_api_key: str | None = None
    public_base_url: str | None = None
    workers: tuple[str, ...] = ("w1",)
    concurrency: int = 2
    flower: bool = True
    prometheus: bool = False  # start Prometheus too, if Debian's prometheus package is installed
    reconcile_interval_seconds: float = 5
    reconcile_grace_seconds: float = 60
    ports: Mapping[str, int | None] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    aws_credentials: Mapping[str, str] | None = None
    submit_examples: bool = False  # submit the examples to a real provider too (they cost money)
    aws_s3: bool = False  # with no s3_endpoint: AWS's own endpoint of the region, not a local one
    # What the environment said that the stack does not follow, one line each (make run prints).
    notes: tuple[str, ...] = ()

    @property
    def local_s3(self) -> bool:
        return self.s3_endpoint is None and not self.aws_s3

    @property
    def emulated(self) -> bool:
        return self.runware_api_url is None

    @property
    def starts_emulator(self) -> bool:
        return self.emulated and self.emulator_url is None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], workdir: Path) -> StackConfig:
        """Read the stack's choices; refuse a blank setting and combinations the real provider
        cannot work with; name in notes every setting present that the stack does not follow."""
        notes: list[str] = []
        environ = _without_previous_stack(environ, notes)
        runware_url = _setting(environ, "RUNWARE_API_URL")
        public = _setting(environ, "PUBLIC_BASE_URL")
        redis_url = _redis(environ, notes)
        s3_endpoint, aws_s3 = _s3(environ, runware_url, notes)
        _check_provider(environ, runware_url, public, s3_endpoint, aws_s3=aws_s3)
        ports = _ports(environ)
        if public is not None and ports["receiver"] is None:
            ports["receiver"] = DEFAULT_PUBLIC_RECEIVER_PORT
        aws = None
        if s3_endpoint is not None or aws_s3:
            aws = {key: value for key, value in environ.items() if key.startswith("AWS_")}
        if runware_url is None:
            _note_ignored(environ, notes, "using the Runware emulator", _runware_settings(environ),
                          "set RUNWARE_API_URL and RUNWARE_API_KEY for the real API")  # fmt: skip
        _note_ignored(environ, notes, "setting its own values", SET_BY_STACK, "")
        config = cls(
            workdir=workdir,
            bucket=_setting(environ, "S3_BUCKET") or "imagine-pipeline",
            prefix=environ.get("S3_PREFIX", "").strip(),
            region=_setting(environ, "S3_REGION") or servers.LOCAL_REGION,
            redis_url=redis_url,
            s3_endpoint=s3_endpoint,
            aws_s3=aws_s3,
            runware_api_url=runware_url,
            runware_api_key=environ.get("RUNWARE_API_KEY") or None,
            public_base_url=public,
            ports=ports,
            extra_env=_passthrough(environ, real_provider=runware_url is not None),
            aws_credentials=aws,
            submit_examples=_flag(environ, SUBMIT_EXAMPLES_VARIABLE),
            notes=tuple(notes),
        )
        _check_pipeline_settings(config, environ)
        return config


def _setting(environ: Mapping[str, str], variable: str) -> str | None:
    """A setting's value, None when unset; set but blank is refused with its name."""
    raw = environ.get(variable)
    if raw is None:
        return None
    if not raw.strip():
        raise StackError(f"{variable} is set but empty: give it a value, or unset it")
    return raw.strip()


def _mode(environ: Mapping[str, str], variable: str, default: str) -> str:
    mode = (_setting(environ, variable) or default).lower()
    if mode not in MODES:
        raise StackError(f"{variable} must be local or external, got {environ[variable]!r}")
    return mode


def _note_ignored(
    environ: Mapping[str, str], notes: list[str], doing: str, variables: Sequence[str], hint: str
) -> None:
    present = [variable for variable in variables if variable in environ]
    if present:
        verb = "is" if len(present) == 1 else "are"
        notes.append(
            f"{doing}; {', '.join(present)} {verb} ignored" + (f" — {hint}" if hint else "")
        )


def _without_previous_stack(environ: Mapping[str, str], notes: list[str]) -> Mapping[str, str]:
    """environ without the settings a sourced stack.env put there: they point at that stack."""
    source = environ.get(STACK_ENV_MARKER)
    if source is None:
        return environ
    present = [variable for variable in STACK_ENV_SETTINGS if variable in environ]
    notes.append(
        f"this shell sourced {source} ({STACK_ENV_MARKER} is set): "
        + (f"{', '.join(present)} from it are ignored, " if present else "")
        + "they name a previous stack — start from a shell without them to set your own"
    )
    dropped = {STACK_ENV_MARKER, *STACK_ENV_SETTINGS}
    return {key: value for key, value in environ.items() if key not in dropped}


def _redis(environ: Mapping[str, str], notes: list[str]) -> str | None:
    """The Redis to use: None for the stack's own (STACK_REDIS=local, the default)."""
    if _mode(environ, "STACK_REDIS", "local") == "external":
        url = _setting(environ, "REDIS_URL")
        if url is None:
            raise StackError("STACK_REDIS=external needs REDIS_URL (redis://host:port/db)")
        return url
    _note_ignored(environ, notes, "using its own Redis", ("REDIS_URL",),
                  "set STACK_REDIS=external to use yours")  # fmt: skip
    return None


def _s3(
    environ: Mapping[str, str], runware_url: str | None, notes: list[str]
) -> tuple[str | None, bool]:
    """The S3 endpoint to use and whether it is AWS's own (no endpoint); (None, False): local.

    A provider outside this machine cannot upload to a local S3 server: external is its default.
    """
    remote = runware_url is not None and not is_local_url(runware_url)
    if _mode(environ, "STACK_S3", "external" if remote else "local") == "external":
        endpoint = _setting(environ, "S3_ENDPOINT_URL")
        return endpoint, endpoint is None
    aws = sorted(key for key in environ if key.startswith("AWS_"))
    _note_ignored(environ, notes, "using its own S3 server", ("S3_ENDPOINT_URL", *aws),
                  "set STACK_S3=external to use yours")  # fmt: skip
    return None, False


def _runware_settings(environ: Mapping[str, str]) -> list[str]:
    return sorted(key for key in environ if key.startswith("RUNWARE_"))


def _check_pipeline_settings(config: StackConfig, environ: Mapping[str, str]) -> None:
    """Read the pipeline processes' settings as they will: a bad one stops make run now, named."""
    from pipeline.config import Settings, SettingsError  # the pipeline's own reading

    env = servers.pipeline_env(
        config.redis_url or "redis://127.0.0.1:1/0",
        config.s3_endpoint or (None if config.aws_s3 else "http://127.0.0.1:1"),
        config.bucket,
        "http://127.0.0.1:1" if config.emulated else None,
        config.runware_api_key or "placeholder",
        config.ports.get("receiver") or 1,
        s3_prefix=config.prefix,
        s3_region=config.region,
        runware_api_url=config.runware_api_url,
        public_base_url=config.public_base_url,
        aws_credentials=config.aws_credentials,
        extra=config.extra_env,
        base=environ,
    )
    try:
        Settings.from_env(env)
    except SettingsError as exc:
        raise StackError(str(exc)) from None


def _check_provider(
    environ: Mapping[str, str],
    runware_url: str | None,
    public: str | None,
    s3_endpoint: str | None,
    *,
    aws_s3: bool = False,
) -> None:
    """Refuse a real provider that could not reach the receiver or S3."""
    if runware_url is None:
        return
    if not environ.get("RUNWARE_API_KEY", "").strip():
        raise StackError(f"RUNWARE_API_URL is {runware_url} but RUNWARE_API_KEY is unset")
    if is_local_url(runware_url):
        return
    if public is None or is_local_url(public):
        raise StackError(
            f"RUNWARE_API_URL is {runware_url}, a provider outside this machine, "
            f"but PUBLIC_BASE_URL is {public or 'unset'}: Runware could not deliver "
            "its webhooks. Set PUBLIC_BASE_URL to a public URL that forwards to the "
            "receiver (STACK_RECEIVER_PORT, default "
            f"{DEFAULT_PUBLIC_RECEIVER_PORT})."
        )
    if aws_s3:
        return
    if s3_endpoint is None or is_local_url(s3_endpoint):
        raise StackError(
            f"RUNWARE_API_URL is {runware_url}, a provider outside this machine, "
            f"but S3 is {s3_endpoint or 'the local S3 server'}: Runware could not "
            "upload to it. Set STACK_S3=external (unset S3_ENDPOINT_URL for AWS, or set it to "
            "a reachable S3 endpoint) with credentials in AWS_*."
        )


def _flag(environ: Mapping[str, str], variable: str) -> bool:
    """A yes/no setting (unset: no); anything else is refused with its name."""
    raw = (_setting(environ, variable) or "").lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise StackError(f"{variable} must be true or false, got {environ[variable]!r}")


def _ports(environ: Mapping[str, str]) -> dict[str, int | None]:
    """The STACK_*_PORT choices (None: a free port), never the shared Redis port."""
    ports: dict[str, int | None] = dict.fromkeys(PORT_VARIABLES)
    for name, variable in PORT_VARIABLES.items():
        raw = _setting(environ, variable)
        if raw is None:
            continue
        try:
            ports[name] = int(raw)
        except ValueError:
            raise StackError(f"{variable} must be a port number, got {raw!r}") from None
        if ports[name] == supervise.SHARED_REDIS_PORT:
            raise StackError(f"{variable}: 6379 is the machine's shared Redis")
    return ports


def _passthrough(environ: Mapping[str, str], *, real_provider: bool) -> dict[str, str]:
    """Settings of the caller's environment the pipeline processes keep."""
    passthrough: dict[str, str] = {}
    if real_provider:
        passthrough.update(
            {
                key: value
                for key, value in environ.items()
                if key.startswith("RUNWARE_") and key not in {"RUNWARE_API_URL", "RUNWARE_API_KEY"}
            }
        )
    if environ.get("WEBHOOK_SECRETS"):
        passthrough["WEBHOOK_SECRETS"] = environ["WEBHOOK_SECRETS"]
    return passthrough


class LocalStack:
    """Starts the stack's processes in dependency order, restarts any one, stops them in reverse."""

    def __init__(self, config: StackConfig, say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.workdir = config.workdir.resolve()
        self.log_dir = (config.log_dir or self.workdir / "logs").resolve()
        self.say = say or _say
        # By process name, in start order: a restarted process keeps its place.
        self.services: dict[str, Service] = {}
        self.env: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self.api_key = ""
        self.emulator_key = config.emulator_key or f"emu-{secrets.token_urlsafe(16)}"
        # Per stack, like the API key: Flower never runs without authentication.
        self.flower_auth = servers.flower_basic_auth()
        self.redis_port: int | None = config.ports.get("redis")
        # Fixed for the stack's life: the webhook URLs the provider holds must survive a restart.
        self.receiver_port = config.ports.get("receiver") or supervise.free_port()
        # Fixed per worker name for the stack's life: Prometheus scrapes a restarted worker there.
        self.worker_metrics_ports: dict[str, int] = {}
        self._stopped = False
        self._keeping = threading.Lock()

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the servers, then the pipeline processes against them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.redis_url is not None:
            self._check_redis(self.config.redis_url)
        base = self._start_servers()
        self.urls = {
            "REDIS_URL": self.config.redis_url or _url(base["redis"]),
            # "" for AWS's own endpoint, which boto3 finds from the region.
            "S3_ENDPOINT_URL": self.config.s3_endpoint
            or (_url(base["s3"]) if "s3" in base else ""),
            "EMULATOR_URL": self._emulator_url(base),
        }
        self._prepare_bucket()
        self.api_key = secrets.token_urlsafe(24)
        self.env = self._pipeline_env()
        rest = self._start_pipeline()
        self.urls["RECEIVER_URL"] = _url(rest["receiver"])
        # Where Runware will send webhooks (PUBLIC_BASE_URL) reaches this receiver, or why not.
        self.say(probe_webhook_path(Settings.from_env(self.env)).line())
        self.urls["FLOWER_URL"] = _url(rest["flower"]) if "flower" in rest else ""
        self.urls["PROMETHEUS_URL"] = self._start_prometheus()

    def _start_servers(self) -> dict[str, Service]:
        config = self.config
        starters: dict[str, Callable[[], Service]] = {}
        if config.redis_url is None:
            starters["redis"] = self.start_redis
        if config.local_s3:
            starters["s3"] = self.start_s3
        if config.starts_emulator:
            starters["emulator"] = self.start_emulator
        return self._run_parallel(starters)

    def _start_pipeline(self) -> dict[str, Service]:
        starters: dict[str, Callable[[], Service]] = {"receiver": self.start_receiver}
        for name in self.config.workers:
            starters[f"worker-{name}"] = functools.partial(self.start_worker, name)
        starters["beat"] = self.start_beat
        if self.config.flower:
            starters["flower"] = self.start_flower
        return self._run_parallel(starters)

    def _run_parallel(self, starters: Mapping[str, Callable[[], Service]]) -> dict[str, Service]:
        """Start independent services at once; on any failure stop the ones that came up."""
        if not starters:
            return {}
        started: dict[str, Service] = {}
        errors: list[str] = []
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(starters)) as pool:
            futures: dict[str, Future[Service]] = {
                name: pool.submit(start) for name, start in starters.items()
            }
            try:
                for name, future in futures.items():
                    try:
                        started[name] = future.result()
                    except Exception as exc:
                        errors.append(f"{name} failed to start: {exc}")
            except BaseException:
                # Ctrl-C while waiting: end the processes the threads are waiting on, so the
                # threads' readiness checks fail at once and the pool can close.
                for process in supervise.running_processes():
                    if process.name in starters:
                        process.stop(timeout=3)
                raise
        if errors:
            raise StackError("\n".join(errors))
        self.say(f"{', '.join(starters)} ready in {time.monotonic() - began:.1f}s")
        return started

    def _keep(self, service: Service) -> Service:
        # Services start in parallel threads: one at a time here, the record file whole.
        with self._keeping:
            self.services[service.name] = service
            # What the next start stops if this supervisor dies without stopping its processes.
            supervise.write_records(
                self.workdir / RECORDS_FILE, [kept.process for kept in self.services.values()]
            )
        return service

    def start_redis(self) -> Service:
        """Start Redis (again: on the same port and data directory, AOF as configured)."""
        service = servers.start_redis(
            self.workdir / "redis", self.redis_port, appendonly=self.config.redis_aof,
            log_dir=self.log_dir,
        )  # fmt: skip
        self.redis_port = service.port
        return self._keep(service)

    def start_s3(self) -> Service:
        return self._keep(
            servers.start_s3(self.workdir / "s3", self.config.ports.get("s3"), log_dir=self.log_dir)
        )

    def start_emulator(self) -> Service:
        return self._keep(
            servers.start_emulator(
                self.workdir / "emulator", self.config.ports.get("emulator"),
                api_key=self.emulator_key, extra_args=self.config.emulator_args,
                log_dir=self.log_dir,
            )
        )  # fmt: skip

    def start_receiver(self) -> Service:
        """Start the receiver (again) on the stack's receiver port."""
        return self._keep(
            servers.start_receiver(self.workdir, self.env, self.receiver_port, log_dir=self.log_dir)
        )

    def start_worker(self, name: str, log_dir: Path | None = None) -> Service:
        """Start (or start again) the worker name@<host> with the stack's concurrency."""
        metrics_port = self.worker_metrics_ports.setdefault(name, supervise.free_port())
        return self._keep(
            servers.start_worker(
                self.workdir, self.env, name, concurrency=self.config.concurrency,
                log_dir=log_dir or self.log_dir, metrics_port=metrics_port,
            )
        )  # fmt: skip

    def start_beat(self) -> Service:
        return self._keep(servers.start_beat(self.workdir / "beat", self.env, log_dir=self.log_dir))

    def start_flower(self) -> Service:
        return self._keep(
            servers.start_flower(
                self.workdir, self.env, self.config.ports.get("flower"),
                basic_auth=self.flower_auth, log_dir=self.log_dir,
            )
        )  # fmt: skip

    def scrape_targets(self) -> list[monitoring.ScrapeTarget]:
        """The metrics endpoints of the stack's processes: receiver, each worker, Flower."""
        return monitoring.scrape_targets(self.services.values(), self.flower_auth)

    def _start_prometheus(self) -> str:
        """Start Prometheus over the stack's targets and alert rules; its URL, or "" if skipped."""
        if not self.config.prometheus:
            return ""
        executable = servers.prometheus_executable()
        if executable is None:
            return ""  # make run's summary says how to get it
        workdir = self.workdir / "prometheus"
        config = monitoring.write_prometheus_config(
            workdir / "prometheus.yml", monitoring.prometheus_config(self.scrape_targets())
        )
        began = time.monotonic()
        service = self._keep(
            servers.start_prometheus(
                workdir, config, self.config.ports.get("prometheus"), executable=executable,
                log_dir=self.log_dir,
            )
        )  # fmt: skip
        self.say(f"prometheus ready in {time.monotonic() - began:.1f}s")
        return _url(service)

    def _emulator_url(self, base: Mapping[str, Service]) -> str:
        if not self.config.emulated:
            return ""
        return self.config.emulator_url or _url(base["emulator"])

    def _prepare_bucket(self) -> None:
        if self.config.local_s3:
            servers.create_bucket(self.urls["S3_ENDPOINT_URL"], self.config.bucket,
                                  self.config.region)  # fmt: skip
        else:
            self._check_bucket(self.urls["S3_ENDPOINT_URL"])

    def _check_redis(self, url: str) -> None:
        import redis  # only an external Redis needs a check here

        from pipeline.secrets import redact_url

        try:
            redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
        except redis.RedisError as exc:
            raise StackError(
                f"Redis at {redact_url(url)} (REDIS_URL, STACK_REDIS=external) is not "
                f"reachable: {exc}"
            ) from exc

    def _check_bucket(self, endpoint: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # slow to import; rarely needed

        try:
            self.s3_client().head_bucket(Bucket=self.config.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StackError(
                f"bucket {self.config.bucket} at {endpoint or 'AWS S3'} is not reachable: {exc}"
            ) from exc

    def s3_client(self) -> Any:
        """A boto3 client of the stack's S3, with the credentials its processes use."""
        endpoint = self.urls["S3_ENDPOINT_URL"]
        if self.config.aws_credentials is None:
            return servers.local_s3_client(endpoint, self.config.region)
        import boto3  # boto3 is slow to import; only real S3 needs it here

        return boto3.client("s3", endpoint_url=endpoint or None, region_name=self.config.region)

    def _pipeline_env(self) -> dict[str, str]:
        config = self.config
        return servers.pipeline_env(
            self.urls["REDIS_URL"],
            self.urls["S3_ENDPOINT_URL"] or None,
            config.bucket,
            self.urls["EMULATOR_URL"] or None,
            self.emulator_key if config.emulated else config.runware_api_key or "",
            self.receiver_port,
            s3_prefix=config.prefix,
            s3_region=config.region,
            runware_api_url=config.runware_api_url,
            public_base_url=config.public_base_url,
            api_keys=f"dev:{self.api_key}",
            aws_credentials=config.aws_credentials,
            allow_private_urls=config.emulated,
            reconcile_interval_seconds=config.reconcile_interval_seconds,
            reconcile_grace_seconds=config.reconcile_grace_seconds,
            extra=config.extra_env,
        )

    # --- run -----------------------------------------------------------------------------------

    @property
    def workers(self) -> dict[str, Service]:
        """The worker services by worker name (w1, not worker-w1)."""
        return {
            name.removeprefix("worker-"): service
            for name, service in self.services.items()
            if name.startswith("worker-")
        }

    def check(self) -> None:
        """Raise ChildDied if any process of the stack has exited."""
        for service in self.services.values():
            if not service.process.alive:
                raise ChildDied(service)

    def write_env_file(self) -> Path:
        """Write stack.env: shell KEY=value lines that connect people and tools to this stack."""
        path = self.workdir / "stack.env"
        values = {
            # The next stack recognises a shell that sourced this file, and ignores these values.
            STACK_ENV_MARKER: str(path),
            "REDIS_URL": self.env["REDIS_URL"],
            "S3_ENDPOINT_URL": self.urls["S3_ENDPOINT_URL"],
            "S3_BUCKET": self.env["S3_BUCKET"],
            "S3_PREFIX": self.env["S3_PREFIX"],
        }
        if not values["S3_ENDPOINT_URL"]:
            del values["S3_ENDPOINT_URL"]  # AWS's own endpoint: boto3 finds it from the region
        lines = ["# Written by python -m infra.stack; valid while that stack runs."]
        if self.config.local_s3:
            values["AWS_ACCESS_KEY_ID"] = self.env["AWS_ACCESS_KEY_ID"]
            values["AWS_SECRET_ACCESS_KEY"] = self.env["AWS_SECRET_ACCESS_KEY"]
        else:
            lines.append("# AWS credentials: your own, from your environment (not copied here).")
        values.update(
            RECEIVER_URL=self.urls["RECEIVER_URL"],
            EMULATOR_URL=self.urls["EMULATOR_URL"],
            FLOWER_URL=self.urls["FLOWER_URL"],
            FLOWER_BASIC_AUTH=self.flower_auth,
            PROMETHEUS_URL=self.urls.get("PROMETHEUS_URL", ""),
            API_KEY=self.api_key,
            # What the imagine command and imagine_client.Client.from_env() read.
            IMAGINE_API_URL=self.urls["RECEIVER_URL"],
            IMAGINE_API_KEY=self.api_key,
        )
        if self.env.get("CALLBACK_SECRET"):
            # What a local callback receiver verifies this stack's signatures with.
            values["CALLBACK_SECRET"] = self.env["CALLBACK_SECRET"]
        lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- stop ----------------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process, the last started first."""
        if self._stopped:
            return
        self._stopped = True
        for service in reversed(list(self.services.values())):
            try:
                service.stop(timeout)
            except Exception as exc:
                print(f"stack: stopping {service.name} failed: {exc}", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / RECORDS_FILE).unlink()


def _url(service: Service) -> str:
    if service.url is None:
        raise StackError(f"{service.name} listens nowhere")
    return service.url


def _say(message: str) -> None:
    print(f"stack: {message}", flush=True)


# --- the working directory of make run ---------------------------------------------------------


def claim_workdir(workdir: Path, say: Callable[[str], None] = _say) -> None:
    """Make workdir this process's: refuse a live stack there, stop what a dead one left running,
    then start from empty data."""
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "stack.pid"
    other = None
    with contextlib.suppress(FileNotFoundError):
        # "pid start-time"; a pid alone (an older stack's file) is taken as still that stack's.
        fields = [*pidfile.read_text().split(), "-"][:2]
        other = supervise.GroupRecord.parse(f"stack {' '.join(fields)}")
    if other is not None and other.pgid != os.getpid() and _supervisor_alive(other):
        raise StackError(f"another stack (pid {other.pgid}) runs in {workdir}; stop it first")
    _stop_leftovers(workdir, other, say)
    pidfile.write_text(f"{os.getpid()} {supervise.process_start_time(os.getpid())}\n")
    # Each run starts empty: the local S3 server keeps nothing, so old jobs would point at
    # objects that no longer exist.
    for stale in ("redis", "logs", "beat", "metrics", "prometheus"):
        shutil.rmtree(workdir / stale, ignore_errors=True)


def release_workdir(workdir: Path) -> None:
    """Remove the pid file claim_workdir wrote, if it is still this process's."""
    with contextlib.suppress(FileNotFoundError):
        pidfile = workdir / "stack.pid"
        if pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()


def _supervisor_alive(record: supervise.GroupRecord) -> bool:
    """Whether the recorded supervisor still runs (not another process that took its pid)."""
    started = supervise.process_start_time(record.pgid)
    return started is not None and record.started in (None, started)


def _stop_leftovers(
    workdir: Path, supervisor: supervise.GroupRecord | None, say: Callable[[str], None]
) -> None:
    """Stop the process groups a stack that died without stopping them left in workdir."""
    leftovers = [group for group in supervise.read_records(workdir / RECORDS_FILE) if group.alive()]
    if leftovers:
        named = ", ".join(f"{group.name} (pid {group.pgid})" for group in leftovers)
        whose = f"pid {supervisor.pgid}" if supervisor is not None else "its supervisor gone"
        say(f"a previous stack in {workdir} ({whose}) ended without stopping its processes; "
            f"stopping {named}")  # fmt: skip
        try:
            supervise.stop_groups(leftovers)
        except PermissionError:
            raise StackError(
                f"processes of a previous stack in {workdir} still run and are not yours to "
                f"stop: {named}; stop them first"
            ) from None
        still = [group for group in leftovers if group.alive()]
        if still:
            raise StackError(f"could not stop {', '.join(g.name for g in still)}; stop them first")
    with contextlib.suppress(FileNotFoundError):
        (workdir / RECORDS_FILE).unlink()


# --- command line ------------------------------------------------------------------------------


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.stack",
        description="Run the whole pipeline locally and send it the model page's examples.",
    )
    parser.add_argument(
        "--demo", action="store_true", help="exit once the examples finish (0 if all succeeded)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(".run"), help="data, logs, stack.env")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where images are saved")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the examples"
    )
    parser.add_argument(
        "--no-examples", action="store_true", help="start the stack without submitting examples"
    )
    parser.add_argument(
        "--check", action="store_true",
        help="check the environment's settings as make run reads them, print each line, exit",
    )  # fmt: skip
    return parser.parse_args(argv)


def check_environment(environ: Mapping[str, str], workdir: Path) -> StackConfig | None:
    """make run's first step: each setting it ignores named in a line, or the one it refuses."""
    try:
        config = StackConfig.from_environ(environ, workdir)
    except StackError as exc:
        print(f"stack: refusing to start: {exc}", file=sys.stderr, flush=True)
        return None
    for note in config.notes:
        _say(note)
    return config


def _describe(config: StackConfig) -> str:
    redis = f"Redis {_redacted(config.redis_url)}" if config.redis_url else "its own Redis"
    if config.local_s3:
        s3 = "its own S3 server"
    else:
        s3 = f"S3 {config.s3_endpoint or 'of AWS (' + config.region + ')'}"
    provider = config.runware_api_url or "the Runware emulator"
    return f"{redis}, {s3} (bucket {config.bucket}), {provider}"


def _redacted(url: str) -> str:
    from pipeline.secrets import redact_url

    return redact_url(url)


def _checked_config(args: argparse.Namespace) -> StackConfig | int:
    """The stack's configuration, or the exit code of --check or of a refusal."""
    checked = check_environment(os.environ, args.workdir)
    if checked is None:
        return 2
    if args.check:
        _say(f"configuration ok: would use {_describe(checked)}")
        return 0
    return dataclasses.replace(checked, prometheus=not args.demo)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = _checked_config(args)
    if isinstance(config, int):
        return config
    stack = LocalStack(config)
    previous = {
        sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    # A shell starting this in the background ignores SIGINT; Ctrl-C must still stop the stack.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        began = time.monotonic()
        print(f"stack: starting in {stack.workdir} (logs in {stack.log_dir})", flush=True)
        claim_workdir(stack.workdir)
        stack.start()
        env_file = stack.write_env_file()
        print(
            f"stack: ready in {time.monotonic() - began:.1f}s; connection settings in {env_file}",
            flush=True,
        )
        ok = True
        examples = [] if args.no_examples else examples_to_submit(config, demo.load_examples())
        if examples:
            runs = demo.run_examples(stack, examples, args.out, args.timeout)
            ok = demo.report(runs, config.bucket)
        if args.demo:
            print("stack: demo " + ("succeeded" if ok else "FAILED"), flush=True)
            code = 0 if ok else 1
            return code
        _print_urls(stack, env_file)
        while True:
            stack.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstack: interrupted", file=sys.stderr, flush=True)
        code = 130 if args.demo else 0
    except Terminated as exc:
        print(f"stack: {exc} received", file=sys.stderr, flush=True)
        code = 143 if args.demo else 0
    except (StackError, ProcessError) as exc:
        print(f"stack: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C must not leave half the children running.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        print("stack: stopping", file=sys.stderr, flush=True)
        stack.stop()
        release_workdir(stack.workdir)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def examples_to_submit(
    config: StackConfig,
    examples: Sequence[dict[str, Any]],
    say: Callable[[str], None] = _say,
) -> list[dict[str, Any]]:
    """The examples to send: all of them to the emulator; to a real provider, only when asked.

    Either way a real provider is told about first, with what the examples would cost.
    """
    if config.emulated:
        return list(examples)
    images, cost = demo.estimate_cost(examples)
    estimate = (
        f"the model page's {len(examples)} examples ({images} images, estimated ${cost:.2f}: "
        f"${demo.PRICE_PER_IMAGE} per image + ${demo.PRICE_PER_REFERENCE_IMAGE} per reference "
        "image)"
    )
    if not config.submit_examples:
        say(
            f"not submitting {estimate} to {config.runware_api_url}, a real provider; "
            f"set {SUBMIT_EXAMPLES_VARIABLE}=true to submit them"
        )
        return []
    say(f"submitting {estimate} to {config.runware_api_url}")
    return list(examples)


def _print_urls(stack: LocalStack, env_file: Path) -> None:
    urls = stack.urls
    print("stack: running; Ctrl-C stops everything", flush=True)
    print(f"  jobs API / receiver  {urls['RECEIVER_URL']}  (Bearer key in {env_file})")
    flower_user = stack.flower_auth.partition(":")[0]
    print(
        f"  Flower               {urls['FLOWER_URL']}  (log in as {flower_user}; the password "
        f"follows the colon of FLOWER_BASIC_AUTH in {env_file})"
    )
    if urls.get("PROMETHEUS_URL"):
        print(
            f"  Prometheus           {urls['PROMETHEUS_URL']}  (scrapes the receiver, the "
            "workers and Flower; see Status > Targets, and Alerts)"
        )
    elif stack.config.prometheus:
        print("  Prometheus           not started: not installed (apt-get install prometheus)")
    if urls["EMULATOR_URL"]:
        print(f"  Runware emulator     {urls['EMULATOR_URL']}")
    s3 = urls["S3_ENDPOINT_URL"] or f"AWS S3 ({stack.config.region})"
    print(f"  S3                   {s3}  bucket {stack.config.bucket}")
    print(f"  Redis                {urls['REDIS_URL']}")
    for line in _cli_lines(env_file):
        print(line)
    sys.stdout.flush()


def _cli_lines(env_file: Path) -> list[str]:
    """How to call the imagine command against this stack, from the directory it started in."""
    here = Path.cwd()
    command = Path(sys.executable).parent / "imagine"
    shown = os.path.relpath(command, here) if command.is_relative_to(here) else str(command)
    lines = [
        f"  imagine CLI          {shown} submit infra/fixtures/model-page-examples.json --wait",
        f"                       {shown} jobs | status <id> | download <id> <dir> | --help",
    ]
    home = env_file.parent.parent.resolve()
    if env_file.parent.name == ".run" and here.resolve().is_relative_to(home):
        # imagine looks for .run/stack.env in its directory and the ones above it.
        lines.append(
            f"                       (it reads IMAGINE_API_URL and IMAGINE_API_KEY from "
            f"{os.path.relpath(env_file, here)} when run in {home} or below)"
        )
    else:
        lines.append(f"                       (first: set -a; . {env_file}; set +a)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
