"""The reduced chaos run: 60 images under an exact count of each fault, one worker kill."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra import servers, supervise

pytestmark = pytest.mark.chaos

LAST_LINE = re.compile(
    r"^chaos: requested=(?P<requested>\d+) stored=(?P<stored>\d+) failed=(?P<failed>\d+) "
    r"lost=(?P<lost>\d+) duplicates=(?P<duplicates>\d+) charged=(?P<charged>\d+) "
    r"charged_twice=(?P<charged_twice>\d+) drain_s=(?P<drain_s>[\d.]+)$"
)


@pytest.mark.timeout(420)
def test_reduced_chaos_run_loses_nothing_and_charges_once(tmp_path: Path) -> None:
    # A process of its own: the run installs signal handlers and stops every child it started.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.chaos",
            "--reduced",
            "--images",
            "60",
            "--seed",
            "7",
            "--workdir",
            str(tmp_path / "chaos"),
            "--timeout",
            "300",
        ],
        cwd=supervise.REPO_ROOT,
        env=servers.scrubbed_environ(),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, output
    match = LAST_LINE.match(lines[-1])
    assert match, output[-5000:]
    numbers = {name: float(value) for name, value in match.groupdict().items()}
    assert numbers["requested"] == 60, output[-5000:]
    assert numbers["lost"] == 0, output[-5000:]
    assert numbers["duplicates"] == 0, output[-5000:]
    assert numbers["charged_twice"] == 0, output[-5000:]
    assert numbers["stored"] + numbers["failed"] == numbers["requested"], output[-5000:]
    # One permanent item error was injected: that image fails, every other one is stored.
    assert numbers["failed"] == 1, output[-5000:]
    assert numbers["charged"] == numbers["stored"], output[-5000:]
    assert result.returncode == 0, output[-5000:]
    assert "killed main process" in result.stdout
    assert "restarted Redis" in result.stdout
    assert "restarted the receiver" in result.stdout
