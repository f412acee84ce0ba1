"""The local stack: every pipeline process on this machine, then the model page's examples."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
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

import httpx

from infra import servers, supervise
from infra.supervise import ProcessError, Service
from pipeline.http import RetryOnDisconnectTransport

EXAMPLES_PATH = Path(__file__).resolve().parent / "fixtures" / "model-page-examples.json"
TERMINAL_STATES = frozenset(
    {"succeeded", "partially_succeeded", "failed", "cancelled", "timed_out"}
)
PORT_VARIABLES = {
    "redis": "STACK_REDIS_PORT",
    "s3": "STACK_S3_PORT",
    "emulator": "STACK_EMULATOR_PORT",
    "receiver": "STACK_RECEIVER_PORT",
    "flower": "STACK_FLOWER_PORT",
}
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
    """What to start and where, decided from the environment before anything starts."""

    workdir: Path
    out_dir: Path
    bucket: str = "imagine-pipeline"
    prefix: str = ""
    region: str = servers.LOCAL_REGION
    s3_endpoint: str | None = None  # None: start a local S3 server
    runware_api_url: str | None = None  # None: start the emulator
    runware_api_key: str | None = None
    public_base_url: str | None = None
    ports: Mapping[str, int | None] = field(default_factory=dict)
    passthrough: Mapping[str, str] = field(default_factory=dict)
    aws_credentials: Mapping[str, str] | None = None

    @property
    def local_s3(self) -> bool:
        return self.s3_endpoint is None

    @property
    def emulated(self) -> bool:
        return self.runware_api_url is None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], workdir: Path, out_dir: Path) -> StackConfig:
        """Read the stack's choices; refuse combinations the real provider cannot work with."""
        s3_endpoint = environ.get("S3_ENDPOINT_URL") or None
        runware_url = environ.get("RUNWARE_API_URL") or None
        runware_key = environ.get("RUNWARE_API_KEY") or None
        public = environ.get("PUBLIC_BASE_URL") or None
        if runware_url is not None:
            if not runware_key:
                raise StackError(f"RUNWARE_API_URL is {runware_url} but RUNWARE_API_KEY is unset")
            if not is_local_url(runware_url):
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
        ports: dict[str, int | None] = {}
        for name, variable in PORT_VARIABLES.items():
            raw = environ.get(variable)
            if raw:
                try:
                    ports[name] = int(raw)
                except ValueError:
                    raise StackError(f"{variable} must be a port number, got {raw!r}") from None
                if ports[name] == supervise.SHARED_REDIS_PORT:
                    raise StackError(f"{variable}: 6379 is the machine's shared Redis")
            else:
                ports[name] = None
        if public is not None and ports["receiver"] is None:
            ports["receiver"] = DEFAULT_PUBLIC_RECEIVER_PORT
        passthrough: dict[str, str] = {}
        if runware_url is not None:
            passthrough.update(
                {
                    key: value
                    for key, value in environ.items()
                    if key.startswith("RUNWARE_")
                    and key not in {"RUNWARE_API_URL", "RUNWARE_API_KEY"}
                }
            )
        for key in ("WEBHOOK_SECRETS",):
            if environ.get(key):
                passthrough[key] = environ[key]
        aws = None
        if s3_endpoint is not None:
            aws = {key: value for key, value in environ.items() if key.startswith("AWS_")}
        return cls(
            workdir=workdir,
            out_dir=out_dir,
            bucket=environ.get("S3_BUCKET") or "imagine-pipeline",
            prefix=environ.get("S3_PREFIX", ""),
            region=environ.get("S3_REGION") or servers.LOCAL_REGION,
            s3_endpoint=s3_endpoint,
            runware_api_url=runware_url,
            runware_api_key=runware_key,
            public_base_url=public,
            ports=ports,
            passthrough=passthrough,
            aws_credentials=aws,
        )


class LocalStack:
    """Starts the stack's processes in dependency order and stops them in reverse."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.workdir = config.workdir.resolve()
        self.log_dir = self.workdir / "logs"
        self.services: list[Service] = []
        self.env: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self.api_key = ""
        # Per stack, like the API key: Flower never runs without authentication.
        self.flower_auth = servers.flower_basic_auth()
        self._stopped = False

    # --- start ---------------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pidfile = self.workdir / "stack.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                other = int(pidfile.read_text().strip())
                if other != os.getpid() and _pid_alive(other):
                    raise StackError(
                        f"another stack (pid {other}) runs in {self.workdir}; stop it first"
                    )
        pidfile.write_text(f"{os.getpid()}\n")
        # Each run starts empty: the local S3 server keeps nothing, so old jobs would point at
        # objects that no longer exist.
        for stale in ("redis", "logs", "beat"):
            shutil.rmtree(self.workdir / stale, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def _run_parallel(self, starters: Mapping[str, Callable[[], Service]]) -> dict[str, Service]:
        """Start independent services at once; on any failure stop the ones that came up."""
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
        for service in started.values():
            self.services.append(service)
        if errors:
            raise StackError("\n".join(errors))
        names = ", ".join(starters)
        print(f"stack: {names} ready in {time.monotonic() - began:.1f}s", flush=True)
        return started

    def start(self) -> None:
        config = self.config
        self._prepare_workdir()
        ports = config.ports
        emulator_key = f"emu-{secrets.token_urlsafe(16)}"
        first: dict[str, Callable[[], Service]] = {
            "redis": lambda: servers.start_redis(
                self.workdir / "redis", ports.get("redis"), appendonly=True, log_dir=self.log_dir
            ),
        }
        if config.local_s3:
            first["s3"] = lambda: servers.start_s3(
                self.workdir / "s3", ports.get("s3"), log_dir=self.log_dir
            )
        if config.emulated:
            first["emulator"] = lambda: servers.start_emulator(
                self.workdir / "emulator",
                ports.get("emulator"),
                api_key=emulator_key,
                log_dir=self.log_dir,
            )
        base = self._run_parallel(first)

        s3_endpoint = base["s3"].url if config.local_s3 else config.s3_endpoint
        assert s3_endpoint is not None
        if config.local_s3:
            servers.create_bucket(s3_endpoint, config.bucket, config.region)
        else:
            self._check_bucket(s3_endpoint)
        receiver_port = ports.get("receiver") or supervise.free_port()
        self.api_key = secrets.token_urlsafe(24)
        emulator_url = base["emulator"].url if config.emulated else None
        assert base["redis"].url is not None
        self.env = servers.pipeline_env(
            base["redis"].url,
            s3_endpoint,
            config.bucket,
            emulator_url,
            emulator_key if config.emulated else config.runware_api_key or "",
            receiver_port,
            s3_prefix=config.prefix,
            s3_region=config.region,
            runware_api_url=config.runware_api_url,
            public_base_url=config.public_base_url,
            api_keys=f"dev:{self.api_key}",
            aws_credentials=config.aws_credentials,
            allow_private_urls=config.emulated,
            extra=config.passthrough,
        )
        env = self.env
        pipeline: dict[str, Callable[[], Service]] = {
            "receiver": lambda: servers.start_receiver(
                self.workdir, env, receiver_port, log_dir=self.log_dir
            ),
            "worker-w1": lambda: servers.start_worker(
                self.workdir, env, "w1", log_dir=self.log_dir
            ),
            "beat": lambda: servers.start_beat(self.workdir / "beat", env, log_dir=self.log_dir),
            "flower": lambda: servers.start_flower(
                self.workdir, env, ports.get("flower"), basic_auth=self.flower_auth,
                log_dir=self.log_dir,
            ),
        }
        rest = self._run_parallel(pipeline)
        self.urls = {
            "REDIS_URL": env["REDIS_URL"],
            "S3_ENDPOINT_URL": s3_endpoint,
            "RECEIVER_URL": rest["receiver"].url or "",
            "EMULATOR_URL": emulator_url or "",
            "FLOWER_URL": rest["flower"].url or "",
        }

    def _check_bucket(self, endpoint: str) -> None:
        import boto3  # boto3 is slow to import; only this path and downloads need it
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client("s3", endpoint_url=endpoint, region_name=self.config.region)
        try:
            client.head_bucket(Bucket=self.config.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StackError(
                f"bucket {self.config.bucket} at {endpoint} is not reachable: {exc}"
            ) from exc

    # --- run -----------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ChildDied if any process of the stack has exited."""
        for service in self.services:
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
            API_KEY=self.api_key,
        )
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
        for service in reversed(self.services):
            try:
                service.stop(timeout)
            except Exception as exc:
                print(f"stack: stopping {service.name} failed: {exc}", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            pidfile = self.workdir / "stack.pid"
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


# --- the examples ------------------------------------------------------------------------------


@dataclass
class JobRun:
    """One submitted example and what became of it."""

    example: int
    request: dict[str, Any]
    job_id: str | None = None
    job: dict[str, Any] | None = None
    error: str | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.error is not None and self.job is None:
            return "not submitted"
        return str((self.job or {}).get("state", "unknown"))

    @property
    def done(self) -> bool:
        if self.job_id is None:
            return True
        job = self.job or {}
        if job.get("state") not in TERMINAL_STATES:
            return False
        # The manifest is written last; wait for its key on jobs that produced images.
        return job.get("state") not in {"succeeded", "partially_succeeded"} or bool(
            job.get("manifestKey")
        )


def load_examples(path: Path = EXAMPLES_PATH) -> list[dict[str, Any]]:
    """The `request` objects of the model page's examples."""
    return [dict(entry["request"]) for entry in json.loads(path.read_text(encoding="utf-8"))]


def _progress(runs: Sequence[JobRun], elapsed: float) -> str:
    parts = []
    for run in runs:
        slots = (run.job or {}).get("slots") or []
        stored = sum(1 for slot in slots if slot.get("state") == "stored")
        name = (run.job_id or f"example-{run.example}")[:8]
        parts.append(f"{name} {run.state} {stored}/{len(slots) or '?'}")
    return f"[{elapsed:5.1f}s] " + " | ".join(parts)


def run_examples(
    stack: LocalStack,
    requests: Sequence[dict[str, Any]],
    out_dir: Path,
    timeout: float,
    *,
    out: Any = sys.stdout,
) -> list[JobRun]:
    """Submit requests through the jobs API, wait for each job, and download its images."""
    runs = [JobRun(index, request) for index, request in enumerate(requests)]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.urls["RECEIVER_URL"], headers=headers, timeout=30,
                      transport=RetryOnDisconnectTransport()) as client:
        for run in runs:
            key = f"example-{run.request.get('taskUUID') or run.example}"
            try:
                response = client.post(
                    "/v1/jobs", json=run.request, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError as exc:
                run.error = f"POST /v1/jobs failed: {exc}"
                continue
            if response.status_code != 202:
                run.error = f"POST /v1/jobs answered {response.status_code}: {response.text}"
                continue
            run.job = response.json()
            run.job_id = str(run.job["id"])
            print(f"submitted example {run.example} as job {run.job_id}", file=out, flush=True)
        _wait_for_jobs(stack, client, runs, timeout, out)
    for run in runs:
        if run.job is not None and run.state in {"succeeded", "partially_succeeded"}:
            try:
                run.files = download_images(stack, run.job, out_dir)
            except Exception as exc:
                run.error = f"download failed: {exc}"
    return runs


def _wait_for_jobs(
    stack: LocalStack, client: httpx.Client, runs: Sequence[JobRun], timeout: float, out: Any
) -> None:
    started = time.monotonic()
    deadline = started + timeout
    tty = hasattr(out, "isatty") and out.isatty()
    last_line = ""
    while True:
        stack.check()
        for run in runs:
            if run.done:
                continue
            try:
                response = client.get(f"/v1/jobs/{run.job_id}")
            except httpx.HTTPError as exc:
                run.error = f"GET /v1/jobs/{run.job_id} failed: {exc}"
                continue
            if response.status_code == 200:
                run.job = response.json()
                run.error = None
            else:
                run.error = f"GET /v1/jobs/{run.job_id} answered {response.status_code}"
        line = _progress(runs, time.monotonic() - started)
        if tty:
            print(f"\r{line}\x1b[K", end="", file=out, flush=True)
        elif line.split("] ", 1)[1] != last_line.split("] ", 1)[-1]:
            print(line, file=out, flush=True)
        last_line = line
        if all(run.done for run in runs):
            break
        if time.monotonic() >= deadline:
            for run in runs:
                if not run.done:
                    run.error = (run.error or "") + f" not finished after {timeout:.0f}s"
            break
        time.sleep(0.5)
    if tty:
        print(file=out, flush=True)


def _s3_client(stack: LocalStack) -> Any:
    if stack.config.local_s3:
        return servers.local_s3_client(stack.urls["S3_ENDPOINT_URL"], stack.config.region)
    import boto3  # boto3 is slow to import; only downloads need it

    return boto3.client(
        "s3", endpoint_url=stack.urls["S3_ENDPOINT_URL"], region_name=stack.config.region
    )


def download_images(stack: LocalStack, job: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Save the job's final images as out_dir/<jobId>-<slot>.<ext>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    client = _s3_client(stack)
    saved = []
    for slot in job.get("slots") or []:
        key = slot.get("finalKey")
        if not key:
            continue
        extension = key.rsplit(".", 1)[-1]
        target = out_dir / f"{job['id']}-{slot['slot']}.{extension}"
        body = client.get_object(Bucket=stack.config.bucket, Key=key)["Body"].read()
        target.write_bytes(body)
        saved.append(target)
    return saved


def _describe_image(path: Path) -> str:
    try:
        from PIL import Image  # Pillow only describes the file; the pipeline verified it

        with Image.open(path) as image:
            return f"{image.width}x{image.height} {image.format}"
    except Exception as exc:
        return f"unreadable: {exc}"


def report(runs: Sequence[JobRun], bucket: str, out: Any = sys.stdout) -> bool:
    """Print each job's outcome; True when every job succeeded."""
    all_ok = True
    for run in runs:
        job = run.job or {}
        ok = run.state == "succeeded" and run.error is None and bool(run.files)
        all_ok = all_ok and ok
        title = run.job_id or f"example {run.example}"
        print(f"job {title}: {run.state}", file=out)
        if job.get("clientTaskUUID"):
            print(f"  clientTaskUUID {job['clientTaskUUID']}", file=out)
        if job.get("cost") is not None:
            print(f"  cost {job['cost']}", file=out)
        if job.get("reason"):
            print(f"  reason: {job['reason']}", file=out)
        for slot in job.get("slots") or []:
            where = f"s3://{bucket}/{slot['finalKey']}" if slot.get("finalKey") else "-"
            line = f"  slot {slot.get('slot')}: {slot.get('state')} {where}"
            if slot.get("seed") is not None:
                line += f" seed={slot['seed']}"
            if slot.get("error"):
                error = slot["error"]
                line += f" error={error.get('code')}: {error.get('message')}"
            print(line, file=out)
        if job.get("manifestKey"):
            print(f"  manifest: s3://{bucket}/{job['manifestKey']}", file=out)
        for path in run.files:
            print(f"  saved {path} ({_describe_image(path)})", file=out)
        if run.error:
            print(f"  error: {run.error.strip()}", file=out)
    out.flush()
    return all_ok


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
        config = StackConfig.from_environ(os.environ, args.workdir, args.out)
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
        stack.start()
        env_file = stack.write_env_file()
        print(
            f"stack: ready in {time.monotonic() - began:.1f}s; connection settings in {env_file}",
            flush=True,
        )
        ok = True
        if not args.no_examples:
            runs = run_examples(stack, load_examples(), args.out, args.timeout)
            ok = report(runs, config.bucket)
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _print_urls(stack: LocalStack, env_file: Path) -> None:
    urls = stack.urls
    print("stack: running; Ctrl-C stops everything", flush=True)
    print(f"  jobs API / receiver  {urls['RECEIVER_URL']}  (Bearer key in {env_file})")
    flower_user = stack.flower_auth.partition(":")[0]
    print(f"  Flower               {urls['FLOWER_URL']}  (log in as {flower_user}; the password "
          f"follows the colon of FLOWER_BASIC_AUTH in {env_file})")
    if urls["EMULATOR_URL"]:
        print(f"  Runware emulator     {urls['EMULATOR_URL']}")
    print(f"  S3                   {urls['S3_ENDPOINT_URL']}  bucket {stack.config.bucket}")
    print(f"  Redis                {urls['REDIS_URL']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
