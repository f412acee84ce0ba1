"""Metrics: labels kept to known values, the webhook view's counts, and values summed across
processes through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from pipeline import metrics
from tests.unit.conftest import TASK, FakeService, make_client, url

pytestmark = pytest.mark.unit

BODY = {
    "data": [
        {
            "taskType": "imageInference",
            "taskUUID": TASK,
            "imageUUID": "i-1",
            "imageURL": "https://im.runware.ai/image/i-1.jpg",
            "cost": 0.07,
        }
    ]
}


def value(name: str, **labels: str) -> float:
    """A sample of this process's metrics, 0 when it has none yet."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("timeoutProvider", "timeoutProvider"),  # a row of the error table
        ("deadline", "deadline"),  # one of ours
        ("http_503", "http_503"),
        ("insufficientCredits", "other"),  # matched by a pattern row only: could be anything
        ("the GPU caught fire at 12:03", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_an_error_code_becomes_a_label_only_from_a_known_set(code: str | None, label: str) -> None:
    assert metrics.code_label(code) == label


def test_a_tenant_name_outside_the_api_keys_rule_is_other() -> None:
    assert metrics.tenant_label("acme") == "acme"
    assert metrics.tenant_label("team/../x y") == "other"


def test_the_webhook_view_counts_each_result_and_each_refusal() -> None:
    client = make_client(FakeService())
    before = {
        outcome: value("imagine_webhooks_total", outcome=outcome)
        for outcome in ("received", "unauthorized", "not_found", "invalid")
    }

    assert client.post(url(), json=BODY).status_code == 200
    assert client.post(url(token="wrong"), json=BODY).status_code == 401
    assert client.post(url("not-a-uuid", token=None), json=BODY).status_code == 404
    other = "6f4f3c9e-2a43-4f59-9a2c-2f55d1b3c0aa"  # a UUID the service does not know
    assert client.post(url(other), json=BODY).status_code == 404
    assert client.post(url(), data="{", content_type="application/json").status_code == 400
    assert client.post(url(), data="x", content_type="image/png").status_code == 415

    after = {outcome: value("imagine_webhooks_total", outcome=outcome) for outcome in before}
    assert {outcome: after[outcome] - before[outcome] for outcome in before} == {
        "received": 1,
        "unauthorized": 1,
        "not_found": 2,
        "invalid": 2,
    }


def test_a_job_end_counts_it_by_state_and_observes_how_long_it_took() -> None:
    labels = {"tenant": "acme", "state": "partially_succeeded"}
    ended = value("imagine_jobs_ended_total", **labels)
    count = value("imagine_job_duration_seconds_count", state="partially_succeeded")
    total = value("imagine_job_duration_seconds_sum", state="partially_succeeded")

    metrics.job_ended("acme", "partially_succeeded", created_at=1000.0, ended_at=1090.5)

    assert value("imagine_jobs_ended_total", **labels) == ended + 1
    assert value("imagine_job_duration_seconds_count", state="partially_succeeded") == count + 1
    assert value("imagine_job_duration_seconds_sum", state="partially_succeeded") == pytest.approx(
        total + 90.5
    )


def test_a_stored_image_counts_its_cost_and_its_wait_since_receipt() -> None:
    stored = value("imagine_images_stored_total", tenant="acme")
    spent = value("imagine_spend_usd_total", tenant="acme")
    waited = value("imagine_webhook_to_stored_seconds_count")

    metrics.image_stored("acme", 0.07, received_at=50.0, now=51.25)
    metrics.image_stored("acme", None, received_at=None, now=60.0)  # no cost, no receipt time

    assert value("imagine_images_stored_total", tenant="acme") == stored + 2
    assert value("imagine_spend_usd_total", tenant="acme") == pytest.approx(spent + 0.07)
    assert value("imagine_webhook_to_stored_seconds_count") == waited + 1


def test_a_failure_for_good_counts_as_failed_and_dead() -> None:
    failed = value("imagine_images_failed_total", code="timeoutProvider")
    dead = value("imagine_images_dead_total", code="timeoutProvider")

    metrics.image_failed("timeoutProvider", for_good=False)
    metrics.image_failed("timeoutProvider", for_good=True)

    assert value("imagine_images_failed_total", code="timeoutProvider") == failed + 2
    assert value("imagine_images_dead_total", code="timeoutProvider") == dead + 1


@pytest.mark.parametrize(
    ("status", "outcome", "labels"),
    [
        (200, None, ("ok", "200")),
        (400, None, ("client_error", "400")),
        (503, None, ("server_error", "503")),
        (None, "timeout", ("timeout", "none")),
        (None, "transport_error", ("transport_error", "none")),
    ],
)
def test_a_provider_request_is_counted_by_outcome_and_status(
    status: int | None, outcome: str | None, labels: tuple[str, str]
) -> None:
    name, (by_outcome, by_status) = "imagine_provider_requests_total", labels
    before = value(name, outcome=by_outcome, status=by_status)
    metrics.provider_request(status, outcome)
    assert value(name, outcome=by_outcome, status=by_status) == before + 1


def test_one_process_serves_its_own_values_and_the_collectors_it_is_given() -> None:
    class Fixed:
        def collect(self) -> list[Metric]:
            return [GaugeMetricFamily("imagine_jobs_active", "Jobs not yet ended.", value=3)]

    metrics.job_created("acme")
    text = generate_latest(metrics.exposition_registry(Fixed())).decode()

    found = samples(text)
    assert found[("imagine_jobs_created_total", (("tenant", "acme"),))] >= 1
    assert found[("imagine_jobs_active", ())] == 3


COUNT_IN_A_PROCESS = """
from pipeline import metrics
assert metrics.multiprocess()
metrics.job_created("acme")
metrics.webhook("received")
metrics.submit_acknowledged(0.3)
metrics.image_stored("acme", 0.07, received_at=1.0, now=2.0)
"""

RENDER = """
import sys
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pipeline import metrics
sys.stdout.write(generate_latest(metrics.exposition_registry()).decode())
"""


def run_python(code: str, metrics_dir: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_processes_counts_add_up_in_a_third_that_serves_them(tmp_path: Path) -> None:
    run_python(COUNT_IN_A_PROCESS, tmp_path)
    run_python(COUNT_IN_A_PROCESS, tmp_path)

    found = samples(run_python(RENDER, tmp_path))

    assert found[("imagine_jobs_created_total", (("tenant", "acme"),))] == 2
    assert found[("imagine_webhooks_total", (("outcome", "received"),))] == 2
    assert found[("imagine_webhooks_total", (("outcome", "unauthorized"),))] == 0
    assert found[("imagine_submit_ack_seconds_count", ())] == 2
    assert found[("imagine_submit_ack_seconds_bucket", (("le", "0.5"),))] == 2
    assert found[("imagine_images_stored_total", (("tenant", "acme"),))] == 2
    assert found[("imagine_spend_usd_total", (("tenant", "acme"),))] == pytest.approx(0.14)
    # Each process wrote its own file; the served view is their sum, never one of them.
    assert len(list(tmp_path.glob("counter_*.db"))) >= 2
