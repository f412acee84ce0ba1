"""The local stack's choices from the environment, its refusals and the files it writes."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from infra import demo, servers, stack
from infra.stack import LocalStack, StackConfig, StackError

pytestmark = pytest.mark.unit

REAL_RUNWARE = {"RUNWARE_API_URL": "https://api.runware.ai/v1", "RUNWARE_API_KEY": "real-key"}


def _config(environ: dict[str, str], tmp_path: Path) -> StackConfig:
    return StackConfig.from_environ(environ, tmp_path / "run")


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:9000", True),
        ("http://[::1]:9000", True),
        ("http://10.1.2.3", True),
        ("http://192.168.0.10:9000", True),
        ("http://minio.local:9000", True),
        ("https://s3.us-east-1.amazonaws.com", False),
        ("https://hooks.example.com/base", False),
        ("https://203.0.113.5", True),  # documentation range: reserved, never routed publicly
    ],
)
def test_is_local_url(url: str, local: bool) -> None:
    assert stack.is_local_url(url) is local


def test_without_settings_everything_runs_locally(tmp_path: Path) -> None:
    config = _config({}, tmp_path)
    assert config.local_s3 and config.emulated
    assert config.bucket == "imagine-pipeline"
    assert config.ports == dict.fromkeys(stack.PORT_VARIABLES)
    assert config.aws_credentials is None


def test_real_runware_without_a_public_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="PUBLIC_BASE_URL"):
        _config(REAL_RUNWARE, tmp_path)
    with pytest.raises(StackError, match="PUBLIC_BASE_URL"):
        _config({**REAL_RUNWARE, "PUBLIC_BASE_URL": "http://127.0.0.1:8000"}, tmp_path)


def test_real_runware_with_local_s3_is_refused(tmp_path: Path) -> None:
    environ = {**REAL_RUNWARE, "PUBLIC_BASE_URL": "https://hooks.example.com"}
    with pytest.raises(StackError, match="S3"):
        _config({**environ, "STACK_S3": "local"}, tmp_path)
    with pytest.raises(StackError, match="S3"):
        _config({**environ, "S3_ENDPOINT_URL": "http://127.0.0.1:9000"}, tmp_path)


def test_real_runware_without_an_s3_endpoint_uses_aws(tmp_path: Path) -> None:
    environ = {**REAL_RUNWARE, "PUBLIC_BASE_URL": "https://hooks.example.com"}
    config = _config({**environ, "AWS_PROFILE": "own", "S3_REGION": "eu-west-1"}, tmp_path)
    assert config.aws_s3 and not config.local_s3 and config.s3_endpoint is None
    assert config.aws_credentials == {"AWS_PROFILE": "own"}
    assert config.region == "eu-west-1"


def test_real_runware_without_a_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="RUNWARE_API_KEY"):
        _config({"RUNWARE_API_URL": "https://api.runware.ai/v1"}, tmp_path)


def test_real_runware_with_reachable_receiver_and_s3_is_accepted(tmp_path: Path) -> None:
    environ = {
        **REAL_RUNWARE,
        "PUBLIC_BASE_URL": "https://hooks.example.com",
        "S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
        "S3_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIA-own",
        "AWS_SECRET_ACCESS_KEY": "own-secret",
        "RUNWARE_MAX_IN_FLIGHT": "2",
    }
    config = _config(environ, tmp_path)
    assert not config.local_s3 and not config.emulated
    assert config.ports["receiver"] == stack.DEFAULT_PUBLIC_RECEIVER_PORT
    assert config.aws_credentials == {
        "AWS_ACCESS_KEY_ID": "AKIA-own",
        "AWS_SECRET_ACCESS_KEY": "own-secret",
    }
    assert config.extra_env == {"RUNWARE_MAX_IN_FLIGHT": "2"}


def test_ports_come_from_stack_variables_and_never_6379(tmp_path: Path) -> None:
    config = _config({"STACK_FLOWER_PORT": "5555", "STACK_S3_PORT": "9000"}, tmp_path)
    assert config.ports["flower"] == 5555 and config.ports["s3"] == 9000
    with pytest.raises(StackError, match="6379"):
        _config({"STACK_REDIS_PORT": "6379"}, tmp_path)
    with pytest.raises(StackError, match="STACK_RECEIVER_PORT"):
        _config({"STACK_RECEIVER_PORT": "eighty"}, tmp_path)


def test_pipeline_env_scrubs_credentials_and_points_at_the_emulator() -> None:
    base = {
        "PATH": "/usr/bin",
        "RUNWARE_API_KEY": "real-key",
        "RUNWARE_MODEL": "other",
        "AWS_SECRET_ACCESS_KEY": "real-secret",
        "AWS_SESSION_TOKEN": "token",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    env = servers.pipeline_env(
        "redis://127.0.0.1:7001/0",
        "http://127.0.0.1:7002",
        "bucket",
        "http://127.0.0.1:7003",
        "emulator-key",
        7004,
        base=base,
    )
    assert env["PATH"] == "/usr/bin"
    assert "RUNWARE_MODEL" not in env and "AWS_SESSION_TOKEN" not in env
    assert "CELERY_BROKER_URL" not in env
    assert env["RUNWARE_API_KEY"] == "emulator-key"
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "imagine-local"
    assert env["RUNWARE_API_URL"] == "http://127.0.0.1:7003/v1"
    assert env["RUNWARE_IMAGE_HOSTS"] == "127.0.0.1:7003"
    assert env["PUBLIC_BASE_URL"] == "http://127.0.0.1:7004"
    assert env["S3_ENDPOINT_URL"] == "http://127.0.0.1:7002"
    assert env["ALLOW_PRIVATE_URLS"] == "true"
    assert len(env["WEBHOOK_SECRETS"]) >= 32
    assert len(servers.api_key_for(env)) >= 24


def test_pipeline_env_for_real_services_keeps_the_callers_credentials() -> None:
    env = servers.pipeline_env(
        "redis://127.0.0.1:7001/0",
        None,
        "bucket",
        None,
        "real-key",
        8000,
        runware_api_url="https://api.runware.ai/v1",
        public_base_url="https://hooks.example.com",
        aws_credentials={"AWS_ACCESS_KEY_ID": "own", "AWS_SECRET_ACCESS_KEY": "own-secret"},
        allow_private_urls=False,
        base={"S3_ENDPOINT_URL": "http://127.0.0.1:1"},
    )
    assert "S3_ENDPOINT_URL" not in env
    assert "RUNWARE_IMAGE_HOSTS" not in env
    assert env["RUNWARE_API_URL"] == "https://api.runware.ai/v1"
    assert env["AWS_ACCESS_KEY_ID"] == "own"
    assert env["ALLOW_PRIVATE_URLS"] == "false"


def test_stack_env_file_round_trips_through_the_shell(tmp_path: Path) -> None:
    local = LocalStack(_config({}, tmp_path))
    local.workdir.mkdir(parents=True)
    local.api_key = 'k$y\'with "quotes" and spaces'
    local.env = {
        "REDIS_URL": "redis://127.0.0.1:7001/0",
        "S3_BUCKET": "imagine-pipeline",
        "S3_PREFIX": "",
        "AWS_ACCESS_KEY_ID": "imagine-local",
        "AWS_SECRET_ACCESS_KEY": "imagine-local",
        "CALLBACK_SECRET": "whsec_c2VjcmV0LW9mLXRoZS1sb2NhbC1zdGFjay0xMjM0",
    }
    local.urls = {
        "S3_ENDPOINT_URL": "http://127.0.0.1:7002",
        "RECEIVER_URL": "http://127.0.0.1:7004",
        "EMULATOR_URL": "http://127.0.0.1:7003",
        "FLOWER_URL": "http://127.0.0.1:7005",
        "PROMETHEUS_URL": "http://127.0.0.1:7006",
    }
    path = local.write_env_file()
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            ((key_value),) = shlex.split(line)
            key, _, value = key_value.partition("=")
            values[key] = value
    assert set(values) == {
        "REDIS_URL", "S3_ENDPOINT_URL", "S3_BUCKET", "S3_PREFIX", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "RECEIVER_URL", "EMULATOR_URL", "FLOWER_URL",
        "FLOWER_BASIC_AUTH", "PROMETHEUS_URL", "API_KEY", "IMAGINE_API_URL", "IMAGINE_API_KEY",
        "CALLBACK_SECRET", "STACK_ENV_FILE",
    }  # fmt: skip
    assert values["STACK_ENV_FILE"] == str(path)
    assert values["PROMETHEUS_URL"] == "http://127.0.0.1:7006"
    assert values["API_KEY"] == values["IMAGINE_API_KEY"] == local.api_key
    assert values["IMAGINE_API_URL"] == "http://127.0.0.1:7004"
    assert values["FLOWER_BASIC_AUTH"] == local.flower_auth
    assert values["S3_PREFIX"] == ""
    assert values["CALLBACK_SECRET"] == local.env["CALLBACK_SECRET"]
    assert path.stat().st_mode & 0o077 == 0


def test_examples_are_the_model_page_requests() -> None:
    requests = demo.load_examples()
    assert len(requests) == 3
    assert all(request["taskType"] == "imageInference" for request in requests)
    assert all(request["model"] == "xai:grok-imagine@image-pro" for request in requests)


REAL_STACK = {
    **REAL_RUNWARE,
    "PUBLIC_BASE_URL": "https://hooks.example.com",
    "S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
}


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, Any]]]:
    """What `python -m infra.stack --demo` sends through the jobs API, with no process started."""
    sent: list[list[dict[str, Any]]] = []

    def run_examples(
        local: LocalStack, requests: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> list[demo.JobRun]:
        sent.append(list(requests))
        return []

    monkeypatch.setattr(demo, "run_examples", run_examples)
    monkeypatch.setattr(demo, "report", lambda runs, bucket: True)
    monkeypatch.setattr(LocalStack, "start", lambda self: None)
    monkeypatch.setattr(LocalStack, "stop", lambda self, timeout=10.0: None)
    monkeypatch.setattr(LocalStack, "write_env_file", lambda self: self.workdir / "stack.env")
    for name in ("RUNWARE_API_URL", "RUNWARE_API_KEY", "PUBLIC_BASE_URL", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(stack.SUBMIT_EXAMPLES_VARIABLE, raising=False)
    return sent


def test_real_runware_gets_no_example_unasked(
    submitted: list[list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in REAL_STACK.items():
        monkeypatch.setenv(name, value)
    assert stack.main(["--demo", "--workdir", str(tmp_path / "run")]) == 0
    assert submitted == []
    out = capsys.readouterr().out
    assert "not submitting the model page's 3 examples (3 images, estimated $0.21" in out
    assert f"set {stack.SUBMIT_EXAMPLES_VARIABLE}=true" in out


def test_real_runware_gets_the_examples_when_asked_after_their_cost(
    submitted: list[list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {**REAL_STACK, stack.SUBMIT_EXAMPLES_VARIABLE: "true"}.items():
        monkeypatch.setenv(name, value)
    assert stack.main(["--demo", "--workdir", str(tmp_path / "run")]) == 0
    assert submitted == [demo.load_examples()]
    out = capsys.readouterr().out
    assert (
        "submitting the model page's 3 examples (3 images, estimated $0.21: $0.07 per image + "
        "$0.002 per reference image) to https://api.runware.ai/v1" in out
    )


def test_the_emulator_gets_the_examples_without_being_asked(
    submitted: list[list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config({}, tmp_path)
    assert stack.examples_to_submit(config, demo.load_examples()) == demo.load_examples()
    assert "estimated" not in capsys.readouterr().out


def test_submit_examples_setting_is_a_yes_or_no(tmp_path: Path) -> None:
    assert _config({**REAL_STACK, "STACK_SUBMIT_EXAMPLES": "1"}, tmp_path).submit_examples
    assert not _config(REAL_STACK, tmp_path).submit_examples
    with pytest.raises(StackError, match="STACK_SUBMIT_EXAMPLES"):
        _config({**REAL_STACK, "STACK_SUBMIT_EXAMPLES": "please"}, tmp_path)


def test_cost_estimate_counts_images_and_reference_images() -> None:
    requests = [
        {"positivePrompt": "a", "numberResults": 2},
        {"positivePrompt": "b", "inputs": {"referenceImages": ["x", "y", "z"]}},
        {"positivePrompt": "c", "referenceImages": ["x"], "numberResults": 3},
    ]
    assert demo.estimate_cost(requests) == (6, pytest.approx(0.07 * 6 + 0.002 * (3 + 3)))
    assert demo.estimate_cost(demo.load_examples()) == (3, pytest.approx(0.21))
