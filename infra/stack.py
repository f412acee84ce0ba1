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

    @property
    def local_s3(self) -> bool:
        return self.s3_endpoint is None

    @property
    def emulated(self) -> bool:
        return self.runware_api_url is None

    @property
    def starts_emulator(self) -> bool:
        return self.emulated and self.emulator_url is None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], workdir: Path) -> StackConfig:
        """Read the stack's choices; refuse combinations the real provider cannot work with."""
        s3_endpoint = environ.get("S3_ENDPOINT_URL") or None
        runware_url = environ.get("RUNWARE_API_URL") or None
        public = environ.get("PUBLIC_BASE_URL") or None
        _check_provider(environ, runware_url, public, s3_endpoint)
        ports = _ports(environ)
        if public is not None and ports["receiver"] is None:
            ports["receiver"] = DEFAULT_PUBLIC_RECEIVER_PORT
        aws = None
        if s3_endpoint is not None:
            aws = {key: value for key, value in environ.items() if key.startswith("AWS_")}
        return cls(
            workdir=workdir,
            bucket=environ.get("S3_BUCKET") or "imagine-pipeline",
            prefix=environ.get("S3_PREFIX", ""),
            region=environ.get("S3_REGION") or servers.LOCAL_REGION,
            s3_endpoint=s3_endpoint,
            runware_api_url=runware_url,
            runware_api_key=environ.get("RUNWARE_API_KEY") or None,
            public_base_url=public,
            ports=ports,
            extra_env=_passthrough(environ, real_provider=runware_url is not None),
            aws_credentials=aws,
            submit_examples=_flag(environ, SUBMIT_EXAMPLES_VARIABLE),
        )


def _check_provider(
    environ: Mapping[str, str], runware_url: str | None, public: str | None, s3_endpoint: str | None
) -> None:
    """Refuse a real provider that could not reach the receiver or S3."""
    if runware_url is None:
        return
    if not environ.get("RUNWARE_API_KEY"):
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
    if s3_endpoint is None or is_local_url(s3_endpoint):
        raise StackError(
            f"RUNWARE_API_URL is {runware_url}, a provider outside this machine, "
            f"but S3 is {s3_endpoint or 'the local S3 server'}: Runware could not "
            "upload to it. Set S3_ENDPOINT_URL to a reachable S3 endpoint (for AWS, "
            "https://s3.<region>.amazonaws.com) with credentials in AWS_*."
        )


def _flag(environ: Mapping[str, str], variable: str) -> bool:
    """A yes/no setting (unset: no); anything else is refused with its name."""
    raw = environ.get(variable, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise StackError(f"{variable} must be true or false, got {environ[variable]!r}")


def _ports(environ: Mapping[str, str]) -> dict[str, int | None]:
    """The STACK_*_PORT choices (None: a free port), never the shared Redis port."""
    ports: dict[str, int | None] = dict.fromkeys(PORT_VARIABLES)
    for name, variable in PORT_VARIABLES.items():
        raw = environ.get(variable)
        if not raw:
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

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the servers, then the pipeline processes against them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base = self._start_servers()
        self.urls = {
            "REDIS_URL": self.config.redis_url or _url(base["redis"]),
            "S3_ENDPOINT_URL": self.config.s3_endpoint or _url(base["s3"]),
            "EMULATOR_URL": self._emulator_url(base),
        }
        self._prepare_bucket()
        self.api_key = secrets.token_urlsafe(24)
        self.env = self._pipeline_env()
        rest = self._start_pipeline()
        self.urls["RECEIVER_URL"] = _url(rest["receiver"])
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
        self.services[service.name] = service
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

    def _check_bucket(self, endpoint: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # slow to import; rarely needed

        client = self.s3_client()
        try:
            client.head_bucket(Bucket=self.config.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StackError(
                f"bucket {self.config.bucket} at {endpoint} is not reachable: {exc}"
            ) from exc

    def s3_client(self) -> Any:
        """A boto3 client of the stack's S3, with the credentials its processes use."""
        endpoint = self.urls["S3_ENDPOINT_URL"]
        if self.config.aws_credentials is None:
            return servers.local_s3_client(endpoint, self.config.region)
        import boto3  # boto3 is slow to import; only real S3 needs it here

        return boto3.client("s3", endpoint_url=endpoint, region_name=self.config.region)

    def _pipeline_env(self) -> dict[str, str]:
        config = self.config
        return servers.pipeline_env(
            self.urls["REDIS_URL"],
            self.urls["S3_ENDPOINT_URL"],
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
        values = {
            "REDIS_URL": self.env["REDIS_URL"],
            "S3_ENDPOINT_URL": self.urls["S3_ENDPOINT_URL"],
            "S3_BUCKET": self.env["S3_BUCKET"],
            "S3_PREFIX": self.env["S3_PREFIX"],
        }
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
        path = self.workdir / "stack.env"
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


def _url(service: Service) -> str:
    if service.url is None:
        raise StackError(f"{service.name} listens nowhere")
    return service.url


def _say(message: str) -> None:
    print(f"stack: {message}", flush=True)


# --- the working directory of make run ---------------------------------------------------------


def claim_workdir(workdir: Path) -> None:
    """Make workdir this process's: refuse a live stack there, then start from empty data."""
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "stack.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError, OSError):
            other = int(pidfile.read_text().strip())
            if other != os.getpid() and _pid_alive(other):
                raise StackError(f"another stack (pid {other}) runs in {workdir}; stop it first")
    pidfile.write_text(f"{os.getpid()}\n")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = StackConfig.from_environ(os.environ, args.workdir)
        config = dataclasses.replace(config, prometheus=not args.demo)
    except StackError as exc:
        print(f"stack: refusing to start: {exc}", file=sys.stderr)
        return 2
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
    print(f"  S3                   {urls['S3_ENDPOINT_URL']}  bucket {stack.config.bucket}")
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
