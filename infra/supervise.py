"""Supervise local processes: start each in its own group, wait until it is ready, stop it whole."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
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
from typing import IO

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
# The venv's bin directory: sys.executable is not resolved, so a symlinked venv python still
# points at the venv's own scripts (celery, gunicorn, moto_server).
BIN_DIR = Path(sys.executable).parent
SHARED_REDIS_PORT = 6379
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


def poll_until(
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
    poll_until(lambda: _http_ok(url, expect_status), timeout, f"HTTP {url}", process)


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
    poll_until(lambda: _tcp_open(host, port), timeout, f"TCP {host}:{port}", process)


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
    """A started process, where it listens and where it serves its Prometheus metrics."""

    process: ManagedProcess
    url: str | None = None
    port: int | None = None
    metrics_url: str | None = None

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


def child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """env (default os.environ) with unbuffered Python output."""
    child = dict(os.environ if env is None else env)
    # Log lines must reach the file as they happen: readiness checks read them.
    child["PYTHONUNBUFFERED"] = "1"
    return child


def _is_address_in_use(process: ManagedProcess) -> bool:
    text = process.tail(20).lower()
    return "address already in use" in text or f"errno {errno.EADDRINUSE}" in text


def start_listening(
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


def stop_all(services: Iterable[Service | ManagedProcess], timeout: float = 10.0) -> None:
    """Stop services in the given order, continuing past failures."""
    for service in services:
        with contextlib.suppress(Exception):
            service.stop(timeout)


def process_start_time(pid: int) -> int | None:
    """When pid started (clock ticks after boot), None if no such process: with the pid it names
    one process, never a later one that reuses the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command start at the state (field 3); starttime is field 22.
    return int(stat.rsplit(")", 1)[-1].split()[19])


@dataclass(frozen=True)
class GroupRecord:
    """A process group a supervisor started, as written to its workdir: name, leader, start."""

    name: str
    pgid: int
    started: int | None

    def line(self) -> str:
        return f"{self.name} {self.pgid} {self.started if self.started is not None else '-'}"

    @classmethod
    def parse(cls, line: str) -> GroupRecord | None:
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]) if parts[2].isdigit() else None)

    @classmethod
    def of(cls, process: ManagedProcess) -> GroupRecord | None:
        if process.pid is None:
            return None
        return cls(process.name, process.pid, process_start_time(process.pid))

    def alive(self) -> bool:
        """Whether the group still runs and is the one recorded: its leader is the recorded
        process, or gone while members remain (the kernel reuses no pid of a live group)."""
        if not _group_has_live_member(self.pgid):
            return False
        started = process_start_time(self.pgid)
        return started is None or self.started is None or started == self.started


def write_records(path: Path, processes: Iterable[ManagedProcess]) -> None:
    """Record the running process groups, replacing the file whole (a reader never sees half)."""
    records = [record for record in map(GroupRecord.of, processes) if record is not None]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(record.line() + "\n" for record in records))
    partial.replace(path)


def read_records(path: Path) -> list[GroupRecord]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [record for record in map(GroupRecord.parse, lines) if record is not None]


def stop_groups(groups: Sequence[GroupRecord], timeout: float = 10.0) -> None:
    """SIGTERM every group, wait up to timeout for all of them, SIGKILL what is left.

    PermissionError: a group belongs to another user; nothing was signalled.
    """
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pgid, 0)  # PermissionError here, before any signal is sent
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group.pgid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 3.0)
        while any(_group_has_live_member(g.pgid) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.05)
