"""promtool accepts the alert rules and the local stack's generated Prometheus config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra import debian, monitoring, supervise

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool, from Debian's prometheus package, installed first when missing."""
    found = debian.ensure_command("promtool", "prometheus")
    if found is None:
        pytest.fail("promtool is missing and `apt-get install -y prometheus` did not install it")
    return found


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_pass_promtool(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(monitoring.ALERTS_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = len(monitoring.rule_expressions())
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_each_alert_fires_as_its_promtool_unit_tests_say(promtool: str) -> None:
    tests = monitoring.ALERTS_PATH.with_name("alerts_test.yml")
    result = _promtool(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stack_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    services = [
        supervise.Service(
            supervise.ManagedProcess(name, ["true"], log_dir=tmp_path), metrics_url=url
        )
        for name, url in [
            ("receiver", "http://127.0.0.1:8000/metrics"),
            ("worker-w1", "http://127.0.0.1:9101/metrics"),
            ("flower", "http://127.0.0.1:5555/metrics"),
        ]
    ]
    config = monitoring.prometheus_config(
        monitoring.scrape_targets(services, "imagine:a-long-flower-password")
    )
    path = monitoring.write_prometheus_config(tmp_path / "prometheus.yml", config)
    result = _promtool(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
