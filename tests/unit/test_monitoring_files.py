"""The alert rules and the Grafana dashboard read only metrics the pipeline and Flower serve; the
local stack's Prometheus config scrapes each process where it serves them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from infra import monitoring, supervise

pytestmark = pytest.mark.unit

COUNTERS = {
    "imagine_jobs_created_total", "imagine_jobs_ended_total", "imagine_images_stored_total",
    "imagine_images_failed_total", "imagine_images_dead_total", "imagine_size_mismatches_total",
    "imagine_provider_requests_total", "imagine_webhooks_total", "imagine_callbacks_total",
    "imagine_spend_usd_total", "imagine_results_polled_total",
}  # fmt: skip
HISTOGRAMS = {
    "imagine_submit_ack_seconds", "imagine_webhook_to_stored_seconds",
    "imagine_job_duration_seconds",
}  # fmt: skip
GAUGES = {
    "imagine_jobs_active", "imagine_jobs_stuck", "imagine_runware_in_flight",
    "imagine_runware_in_flight_limit", "imagine_budget_waiters", "imagine_circuit_open",
    "imagine_model_circuit_open", "imagine_queue_length", "imagine_dead_letters",
    "imagine_submissions_paused",
}  # fmt: skip
FLOWER_COUNTERS_AND_GAUGES = {
    "flower_events_total", "flower_worker_online", "flower_task_prefetch_time_seconds",
    "flower_worker_prefetched_tasks", "flower_worker_number_of_currently_executing_tasks",
}  # fmt: skip
FLOWER_HISTOGRAMS = {"flower_task_runtime_seconds"}
PIPELINE_METRICS = COUNTERS | HISTOGRAMS | GAUGES


def _series(names: set[str], histograms: set[str]) -> set[str]:
    """The series names a scrape shows: a histogram as its _bucket, _sum and _count."""
    expanded = {
        f"{name}{suffix}" for name in histograms for suffix in ("_bucket", "_sum", "_count")
    }
    return names | expanded


KNOWN_SERIES = _series(
    COUNTERS | GAUGES | FLOWER_COUNTERS_AND_GAUGES, HISTOGRAMS | FLOWER_HISTOGRAMS
)
REQUIRED_ALERTS = {
    "ImagineTargetDown", "ImagineJobsStuck", "ImagineDeadLettersGrowing", "ImagineCircuitOpen",
    "ImagineWebhooksRejected", "ImagineProviderFailing", "ImagineBudgetSaturated",
    "ImagineSpendRateHigh",
}  # fmt: skip


def _base(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in HISTOGRAMS:
            return series.removesuffix(suffix)
    return series


def test_metric_names_are_read_outside_strings_and_as_written() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(imagine_submit_ack_seconds_bucket[5m])))"
        ' / on() max(imagine_jobs_active{queue="imagine_not_a_metric"}) + flower_worker_online'
    )
    assert monitoring.metric_names(expr) == {
        "imagine_submit_ack_seconds_bucket", "imagine_jobs_active", "flower_worker_online",
    }  # fmt: skip


def test_dashboard_is_current_and_uses_a_prometheus_datasource_variable() -> None:
    document = json.loads(monitoring.DASHBOARD_PATH.read_text())
    assert document["schemaVersion"] >= 39
    (variable,) = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    reference = f"${{{variable['name']}}}"
    panels = [p for p in monitoring.dashboard_panels() if p["type"] != "row"]
    assert len({p["id"] for p in monitoring.dashboard_panels()}) == len(
        list(monitoring.dashboard_panels())
    )
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": reference}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == reference for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_and_rules_name_only_metrics_that_are_served() -> None:
    expressions = {**monitoring.dashboard_expressions(), **monitoring.rule_expressions()}
    unknown = {
        where: sorted(monitoring.metric_names(expr) - KNOWN_SERIES)
        for where, expr in expressions.items()
        if monitoring.metric_names(expr) - KNOWN_SERIES
    }
    assert unknown == {}


def test_dashboard_shows_every_pipeline_metric_and_quantiles_of_each_histogram() -> None:
    expressions = monitoring.dashboard_expressions().values()
    shown = {_base(name) for expr in expressions for name in monitoring.metric_names(expr)}
    assert PIPELINE_METRICS - shown == set()
    for histogram in HISTOGRAMS:
        assert any(
            "histogram_quantile(" in expr and f"{histogram}_bucket" in expr for expr in expressions
        ), histogram
    spend = [expr for expr in expressions if "imagine_spend_usd_total" in expr]
    assert spend and all("by (tenant)" in expr for expr in spend)


def test_each_alert_waits_and_says_what_happened_and_what_to_do() -> None:
    import yaml

    document = yaml.safe_load(monitoring.ALERTS_PATH.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert REQUIRED_ALERTS <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert len(rule["annotations"]["summary"]) > 10, rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_promtool_unit_tests_see_each_alert_fire() -> None:
    import yaml

    tests = yaml.safe_load(monitoring.ALERTS_PATH.with_name("alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == set(monitoring.rule_expressions())


def _service(name: str, metrics_url: str | None) -> supervise.Service:
    process = supervise.ManagedProcess(name, ["true"], log_dir=Path("/nonexistent"))
    return supervise.Service(process, metrics_url=metrics_url)


def test_stack_config_scrapes_receiver_each_worker_and_flower_behind_its_login(
    tmp_path: Path,
) -> None:
    services = [
        _service("receiver", "http://127.0.0.1:8000/metrics"),
        _service("worker-w1", "http://127.0.0.1:9101/metrics"),
        _service("worker-w2", "http://127.0.0.1:9102/metrics"),
        _service("beat", None),
        _service("flower", "http://127.0.0.1:5555/metrics"),
    ]
    targets = monitoring.scrape_targets(services, "imagine:a-long-flower-password")
    config = monitoring.prometheus_config(targets)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"imagine-receiver", "imagine-worker", "imagine-flower"}
    assert jobs["imagine-worker"]["static_configs"] == [
        {"targets": ["127.0.0.1:9101"], "labels": {"worker": "w1"}},
        {"targets": ["127.0.0.1:9102"], "labels": {"worker": "w2"}},
    ]
    assert jobs["imagine-flower"]["basic_auth"] == {
        "username": "imagine", "password": "a-long-flower-password",
    }  # fmt: skip
    assert "basic_auth" not in jobs["imagine-receiver"]
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    assert config["rule_files"] == [str(monitoring.ALERTS_PATH)]
    path = monitoring.write_prometheus_config(tmp_path / "prometheus.yml", config)
    assert json.loads(path.read_text()) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exposed_names_are_those_sampled_or_declared_by_a_scrape() -> None:
    text = (
        "# HELP imagine_jobs_active Jobs not yet ended.\n"
        "# TYPE imagine_jobs_active gauge\n"
        "imagine_jobs_active 3\n"
        'imagine_queue_length{queue="submit"} 0\n'
        "# TYPE imagine_model_circuit_open gauge\n"
        "# TYPE imagine_submit_ack_seconds histogram\n"
        'imagine_submit_ack_seconds_bucket{le="0.5"} 1.0\n'
        "# TYPE imagine_job_duration_seconds histogram\n"
    )
    assert monitoring.exposed_names(text) == {
        "imagine_jobs_active", "imagine_queue_length", "imagine_model_circuit_open",
        "imagine_submit_ack_seconds_bucket", "imagine_submit_ack_seconds_sum",
        "imagine_submit_ack_seconds_count", "imagine_job_duration_seconds_bucket",
        "imagine_job_duration_seconds_sum", "imagine_job_duration_seconds_count",
    }  # fmt: skip
