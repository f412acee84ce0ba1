"""A stack whose supervisor was SIGKILLed: the next start in its workdir stops what it left."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from infra import servers, supervise

pytestmark = pytest.mark.e2e


def _stack_env() -> dict[str, str]:
    env = servers.scrubbed_environ()
    for key in ("S3_ENDPOINT_URL", "PUBLIC_BASE_URL", *[k for k in env if k.startswith("STACK_")]):
        env.pop(key, None)
    return env


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _group_members(pgids: set[int]) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[2]) in pgids and fields[0] not in {"Z", "X"}:
            members.add(int(entry.name))
    return members


def _start(workdir: Path, output: Path) -> tuple[subprocess.Popen[bytes], IO[str]]:
    log = output.open("w")
    stack = subprocess.Popen(
        [sys.executable, "-m", "infra.stack", "--no-examples", "--workdir", str(workdir)],
        cwd=supervise.REPO_ROOT, env=_stack_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in output.read_text():
            assert stack.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
    except BaseException:
        stack.terminate()
        stack.wait(timeout=60)
        log.close()
        raise
    return stack, log


def test_the_next_start_stops_what_a_killed_supervisor_left(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    first, first_log = _start(workdir, tmp_path / "first.out")
    groups = _children(first.pid)
    second = None
    second_log = None
    try:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        left = _group_members(groups)
        assert len(left) > len(groups)  # every group lives on, pool processes and all

        second, second_log = _start(workdir, tmp_path / "second.out")
        said = (tmp_path / "second.out").read_text()
        line = next(line for line in said.splitlines() if "ended without stopping" in line)
        assert f"a previous stack in {workdir.resolve()} (pid {first.pid})" in line
        named = {int(pid) for pid in re.findall(r"\(pid (\d+)\)", line.split("stopping", 1)[1])}
        assert named == groups
        assert "redis (pid" in line and "worker-w1 (pid" in line
        assert not _group_members(groups)  # all of them gone before the new stack started

        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        assert not (workdir / "processes").exists()
    finally:
        for stack in (first, second):
            if stack is not None and stack.poll() is None:
                stack.kill()
                stack.wait()
        for pgid in groups | (_children(second.pid) if second is not None else set()):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for log in (first_log, second_log):
            if log is not None:
                log.close()
