"""The workdir of make run: a live stack there is refused, a dead one's pid is not mistaken."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import supervise
from infra.stack import RECORDS_FILE, StackError, claim_workdir

pytestmark = pytest.mark.unit


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_a_live_stack_in_the_workdir_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    started = supervise.process_start_time(sleeper.pid)
    for content in (f"{sleeper.pid} {started}\n", f"{sleeper.pid}\n"):  # an older stack: pid only
        (tmp_path / "stack.pid").write_text(content)
        with pytest.raises(StackError, match=f"another stack \\(pid {sleeper.pid}\\) runs in"):
            claim_workdir(tmp_path, say=print)


def test_a_pid_taken_by_another_process_is_not_a_stack(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    started = supervise.process_start_time(sleeper.pid)
    assert started is not None
    (tmp_path / "stack.pid").write_text(f"{sleeper.pid} {started - 1}\n")
    said: list[str] = []
    claim_workdir(tmp_path, say=said.append)
    assert said == []
    assert sleeper.poll() is None  # not ours to stop: it is not in the record


def test_recorded_groups_still_running_are_stopped_and_named(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    record = supervise.GroupRecord(
        "worker-w1", sleeper.pid, supervise.process_start_time(sleeper.pid)
    )
    (tmp_path / RECORDS_FILE).write_text(record.line() + "\n")
    (tmp_path / "stack.pid").write_text("999999999 1\n")
    said: list[str] = []
    claim_workdir(tmp_path, say=said.append)
    assert sleeper.wait(timeout=10) != 0
    assert said == [
        f"a previous stack in {tmp_path} (pid 999999999) ended without stopping its processes; "
        f"stopping worker-w1 (pid {sleeper.pid})"
    ]
    assert not (tmp_path / RECORDS_FILE).exists()


def test_a_recorded_pid_now_another_process_is_left_alone(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    started = supervise.process_start_time(sleeper.pid)
    assert started is not None
    record = supervise.GroupRecord("redis", sleeper.pid, started - 1)
    (tmp_path / RECORDS_FILE).write_text(record.line() + "\n")
    said: list[str] = []
    claim_workdir(tmp_path, say=said.append)
    assert said == []
    assert sleeper.poll() is None
