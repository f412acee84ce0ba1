"""make run's configuration check against every mode README.md and .env.example document."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from infra import supervise

pytestmark = pytest.mark.unit

ROOT = supervise.REPO_ROOT
# A clean shell: only what running Python needs, nothing of the caller's settings.
BASE = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}


def _check(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.stack", "--check", "--workdir", "/nonexistent/run"],
        cwd=ROOT, env={**BASE, **environ}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def _env_example_modes() -> dict[str, dict[str, str]]:
    text = (ROOT / ".env.example").read_text()
    modes = {}
    for name, rest in re.findall(r"^# mode ([a-z0-9-]+): (.*)$", text, re.MULTILINE):
        modes[name] = dict(word.split("=", 1) for word in shlex.split(rest) if "=" in word)
    return modes


def _readme_exports() -> list[dict[str, str]]:
    """The environment of each sh block of README.md that exports settings and runs make run."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    found = []
    for block in blocks:
        if "make run" not in block or "export " not in block:
            continue
        environ = {}
        for line in block.splitlines():
            if line.startswith("export "):
                words = shlex.split(line.removeprefix("export "), comments=True)
                environ.update(word.split("=", 1) for word in words)
        found.append(environ)
    return found


MODES = _env_example_modes()


def test_env_example_documents_each_mode() -> None:
    assert set(MODES) == {"local", "real-runware", "real-s3", "other-s3", "external-redis"}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_of_env_example_passes_the_check(mode: str) -> None:
    result = _check(MODES[mode])
    assert result.returncode == 0, result.stderr
    assert "stack: configuration ok" in result.stdout
    assert "ignored" not in result.stdout  # a documented mode sets nothing the stack ignores


def test_the_readme_blocks_pass_the_check() -> None:
    blocks = _readme_exports()
    assert len(blocks) == 2
    real, own = blocks
    result = _check(real)
    assert result.returncode == 0, result.stderr
    assert "S3 of AWS (eu-west-1) (bucket my-bucket), https://api.runware.ai/v1" in result.stdout
    result = _check(own)
    assert result.returncode == 0, result.stderr
    assert "Redis redis://redis.example.com:6379/0, S3 of AWS (eu-west-1)" in result.stdout


def test_sourcing_all_of_env_example_starts_the_local_stack_naming_what_it_ignores() -> None:
    python = shlex.quote(sys.executable)
    script = f"set -a; . ./.env.example; set +a; exec {python} -m infra.stack --check"
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=BASE, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "stack: using its own Redis; REDIS_URL is ignored — set STACK_REDIS=external to use yours"
        in lines
    )
    assert any(
        line.startswith("stack: using the Runware emulator; ") and "RUNWARE_API_KEY" in line
        for line in lines
    )
    assert any(line.startswith("stack: setting its own values; API_KEYS") for line in lines)


def test_redis_url_without_external_redis_is_named_as_ignored() -> None:
    result = _check({"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 0
    assert (
        "stack: using its own Redis; REDIS_URL is ignored — set STACK_REDIS=external to use yours"
        in result.stdout.splitlines()
    )


@pytest.mark.parametrize(
    "variable",
    ["S3_BUCKET", "S3_REGION", "REDIS_URL", "CELERY_VISIBILITY_TIMEOUT", "STACK_S3_PORT",
     "STACK_SUBMIT_EXAMPLES", "STACK_S3"],
)  # fmt: skip
def test_an_empty_setting_is_refused_by_name(variable: str) -> None:
    result = _check(
        {variable: "", "STACK_REDIS": "external"} if variable == "REDIS_URL" else {variable: ""}
    )
    assert result.returncode == 2
    assert f"stack: refusing to start: {variable} is set but empty" in result.stderr


def test_external_redis_needs_its_url() -> None:
    result = _check({"STACK_REDIS": "external"})
    assert result.returncode == 2
    assert "STACK_REDIS=external needs REDIS_URL" in result.stderr


def test_a_sourced_stack_env_is_named_and_its_values_ignored(tmp_path: Path) -> None:
    env_file = tmp_path / "stack.env"
    env_file.write_text(
        f"STACK_ENV_FILE={env_file}\nREDIS_URL=redis://127.0.0.1:7001/0\n"
        "S3_ENDPOINT_URL=http://127.0.0.1:7002\nS3_BUCKET=imagine-pipeline\nS3_PREFIX=''\n"
        "AWS_ACCESS_KEY_ID=imagine-local\nAWS_SECRET_ACCESS_KEY=imagine-local\n"
    )
    values = dict(line.split("=", 1) for line in shlex.split(env_file.read_text()))
    result = _check({**values, "STACK_S3": "external"})
    assert result.returncode == 0, result.stderr
    assert (
        f"stack: this shell sourced {env_file} (STACK_ENV_FILE is set): REDIS_URL, "
        "S3_ENDPOINT_URL, S3_BUCKET, S3_PREFIX, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY from it "
        "are ignored, they name a previous stack — start from a shell without them to set your own"
        in result.stdout.splitlines()
    )
    # Its S3 endpoint is not taken for the user's own: external S3 is then AWS's.
    assert "S3 of AWS" in result.stdout
