"""The `imagine` command against the running pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Pipeline, imagine

pytestmark = pytest.mark.e2e


def test_submit_wait_status_and_jobs(stack: Pipeline, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {"positivePrompt": "from the command line", "resolution": "2K", "outputFormat": "PNG"}
        )
    )

    submitted = imagine(stack, "submit", str(request), "--tenant", "ops", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["state"] == "succeeded"
    assert job["slots"][0]["width"] == 2048 and job["slots"][0]["height"] == 2048
    task = job["slots"][0]["taskUUID"]
    by_task = json.loads(imagine(stack, "status", task, "--json").stdout)
    assert by_task["id"] == job["id"]
    listed = imagine(stack, "jobs", "--tenant", "ops", "--state", "succeeded")
    assert job["id"] in listed.stdout
    unreadable = imagine(stack, "submit", "-", "--tenant", "ops")
    assert unreadable.returncode == 2 and "cannot read the request" in unreadable.stderr
    request.write_text(json.dumps({"positivePrompt": "x", "width": 5, "height": 5}))
    refused = imagine(stack, "submit", str(request), "--tenant", "ops")
    assert refused.returncode == 1 and "validation_failed" in refused.stderr
    assert "width" in json.loads(refused.stdout)
    missing = imagine(stack, "status", "no-such-job")
    assert missing.returncode == 1 and "not_found" in missing.stderr
