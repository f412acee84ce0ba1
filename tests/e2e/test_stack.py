"""`python -m infra.stack`: the demo lands the example images; stopping leaves nothing behind."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra import servers, supervise

pytestmark = pytest.mark.e2e


def _stack_env() -> dict[str, str]:
    env = servers.scrubbed_environ()
    for key in ("S3_ENDPOINT_URL", "PUBLIC_BASE_URL", *[k for k in env if k.startswith("STACK_")]):
        env.pop(key, None)
    return env


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _live(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


def _group_members(pgids: set[int]) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[2]) in pgids and fields[0] not in {"Z", "X"}:
                members.add(int(entry.name))
    return members


def test_demo_saves_every_example_image(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.stack", "--demo",
         "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
        cwd=supervise.REPO_ROOT, env=_stack_env(), capture_output=True, text=True, timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stack: demo succeeded" in result.stdout
    images = sorted((tmp_path / "out").iterdir())
    assert len(images) == 3
    assert all(image.suffix == ".jpg" and image.stat().st_size > 1000 for image in images)
    assert result.stdout.count("manifest: s3://imagine-pipeline/jobs/") == 3
    env_file = (tmp_path / "run" / "stack.env").read_text()
    assert "RECEIVER_URL=http://127.0.0.1:" in env_file and "API_KEY=" in env_file


def test_sigterm_stops_every_process_of_the_stack(tmp_path: Path) -> None:
    log = (tmp_path / "stack.out").open("w")
    stack = subprocess.Popen(
        [sys.executable, "-m", "infra.stack", "--no-examples",
         "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
        cwd=supervise.REPO_ROOT, env=_stack_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        output = tmp_path / "stack.out"
        while "Ctrl-C stops everything" not in output.read_text():
            assert stack.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        children = _children(stack.pid)
        # redis, s3, emulator, receiver, worker, beat, flower (and Prometheus where it is
        # installed): each leads its own group.
        prometheus = _prometheus_url(tmp_path / "run" / "stack.env")
        assert len(children) == (8 if prometheus else 7)
        if prometheus:
            assert httpx.get(f"{prometheus}/-/ready", timeout=10).status_code == 200
        groups = set(children)
        assert len(_group_members(groups)) > len(children)  # pool processes, gunicorn workers
        _assert_flower_wants_the_login_of_stack_env(tmp_path / "run" / "stack.env", groups)

        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=60) == 0

        assert not [pid for pid in children if _live(pid)]
        assert not _group_members(groups)
        assert "SIGTERM received" in output.read_text()
    finally:
        if stack.poll() is None:
            os.kill(stack.pid, signal.SIGKILL)
            stack.wait()
        log.close()


def _prometheus_url(env_file: Path) -> str:
    values = dict(line.split("=", 1) for line in shlex.split(env_file.read_text(), comments=True))
    return values["PROMETHEUS_URL"]


def _assert_flower_wants_the_login_of_stack_env(env_file: Path, pids: set[int]) -> None:
    values = dict(line.split("=", 1) for line in shlex.split(env_file.read_text(), comments=True))
    url, login = values["FLOWER_URL"], values["FLOWER_BASIC_AUTH"]
    assert url.startswith("http://127.0.0.1:")
    user, _, password = login.partition(":")
    assert httpx.get(f"{url}/workers", timeout=10).status_code == 401
    assert httpx.get(f"{url}/workers", auth=(user, password), timeout=10).status_code == 200
    for pid in pids:  # argv is public to the host: the password is never in one
        assert password not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
