"""Metrics over real Redis: each event counted once however often it is replayed, the
receiver's /metrics with the gauges it reads at scrape time, and the worker's own server."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from infra import servers, supervise
from pipeline import metrics
from pipeline.config import Settings, SettingsError
from tests.integration.conftest import UseCases, error_item, image_item, jpeg_bytes
from webhooks.app import create_app
from workers.metrics import serve_metrics

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(name: str, **labels: str) -> float:
    """A sample of this process's metrics, 0 when it has none yet."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def counts(*names: tuple[str, dict[str, str]]) -> list[float]:
    return [value(name, **labels) for name, labels in names]


STORED = ("imagine_images_stored_total", {"tenant": "acme"})
SPENT = ("imagine_spend_usd_total", {"tenant": "acme"})
ENDED = ("imagine_jobs_ended_total", {"tenant": "acme", "state": "succeeded"})
CREATED = ("imagine_jobs_created_total", {"tenant": "acme"})
WAITED = ("imagine_webhook_to_stored_seconds_count", {})
DURATION = ("imagine_job_duration_seconds_count", {"state": "succeeded"})


def test_a_stored_image_and_its_job_count_once_however_often_the_webhook_comes(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    before = counts(CREATED, STORED, SPENT, ENDED, WAITED, DURATION)
    job_id, [task_uuid] = uc.submitted()
    uc.upload(task_uuid, jpeg_bytes())
    item = image_item(task_uuid, cost=0.07)

    assert uc.webhook(task_uuid, {"data": [item]}) == ["received"]
    assert uc.service.promote_slot(job_id, 0) == "stored"
    # Runware delivers the webhook again; a worker's finalize runs again.
    assert uc.webhook(task_uuid, {"data": [item]}) == ["duplicate"]
    assert uc.service.promote_slot(job_id, 0) == "noop"
    assert uc.service.finish_job(job_id) is False

    after = counts(CREATED, STORED, SPENT, ENDED, WAITED, DURATION)
    assert [b - a for a, b in zip(before, after, strict=True)] == pytest.approx(
        [1, 1, 0.07, 1, 1, 1]
    )


def test_a_failed_attempt_counts_once_and_the_last_one_counts_as_dead(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    code = "timeoutProvider"
    failed = ("imagine_images_failed_total", {"code": code})
    dead = ("imagine_images_dead_total", {"code": code})
    ended = ("imagine_jobs_ended_total", {"tenant": "acme", "state": "failed"})
    before = counts(failed, dead, ended)
    job_id = uc.create()
    for _ in range(uc.settings.slot_max_attempts):
        assert uc.service.submit_job(job_id) == "submitted"
        [task_uuid] = uc.task_uuids(job_id)
        body = {"errors": [error_item(task_uuid, code)]}
        uc.webhook(task_uuid, body)
        assert uc.webhook(task_uuid, body) in (["duplicate"], ["stale"])  # a replay

    after = counts(failed, dead, ended)
    attempts = uc.settings.slot_max_attempts
    assert [b - a for a, b in zip(before, after, strict=True)] == [attempts, 1, 1]


def test_a_provider_code_the_error_table_does_not_know_is_counted_as_other(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    failed = ("imagine_images_failed_total", {"code": "other"})
    [before] = counts(failed)
    _job_id, [task_uuid] = uc.submitted()

    # A code shaped like one (free text is stored as providerError) that no row knows.
    body = {"errors": [error_item(task_uuid, "gpuMeltdownOnNode7")]}
    assert uc.webhook(task_uuid, body) == ["retrying"]

    assert counts(failed) == [before + 1]


def test_a_late_result_of_a_cancelled_job_counts_its_cost_once(use_cases: UseCases) -> None:
    uc = use_cases
    ended = ("imagine_jobs_ended_total", {"tenant": "acme", "state": "cancelled"})
    before = counts(SPENT, ended)
    job_id, [task_uuid] = uc.submitted()
    uc.service.cancel_job(job_id, "acme")
    item = image_item(task_uuid, cost=0.07)

    assert uc.webhook(task_uuid, {"data": [item]}) == ["discarded"]
    assert uc.webhook(task_uuid, {"data": [item]}) in (["duplicate"], ["discarded"])

    after = counts(SPENT, ended)
    assert [b - a for a, b in zip(before, after, strict=True)] == pytest.approx([0.07, 1])


# ------------------------------------------------------------------ the receiver's /metrics


def scrape(uc: UseCases) -> tuple[str, Samples]:
    app = create_app(uc.settings, service=uc.service, inline_service=uc.service, roles=["metrics"])
    answer = app.test_client().get("/metrics")
    assert answer.status_code == 200
    text = answer.get_data(as_text=True)
    return answer.content_type, samples(text)


def test_the_receiver_serves_the_counters_and_the_gauges_it_reads_from_redis(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    ctx = uc.service.context
    now = time.time()
    running = uc.create()
    # A job past its deadline by more than the grace period (the reconciler is not running),
    # and the same job overdue in the reconciler's due index.
    uc.store.redis.zadd(uc.store.active_key, {"stuck-job": now - 3600})
    uc.store.redis.zadd(uc.store.due_key, {"stuck-job": now - 3600})
    ctx.budget.wait(running)
    uc.store.dead_letter(running, 0, "timeoutProvider", "retry budget spent")
    uc.service.pause_submissions("maintenance")
    assert uc.service.submit_job(running) == "paused"  # held by the pause
    ctx.circuit.open("invalidApiKey", "refused", now + 60)
    ctx.circuit.open("modelDisabled", "refused", now + 60, "xai:grok-imagine@image")

    content_type, found = scrape(uc)

    assert content_type.startswith("text/plain")
    assert found[("imagine_jobs_created_total", (("tenant", "acme"),))] >= 1
    gauges = {
        name: found[(name, ())]
        for name in (
            "imagine_store_up",
            "imagine_jobs_active",
            "imagine_jobs_stuck",
            "imagine_reconcile_overdue",
            "imagine_runware_in_flight",
            "imagine_runware_in_flight_limit",
            "imagine_budget_waiters",
            "imagine_dead_letters",
            "imagine_submissions_paused",
            "imagine_submissions_held",
            "imagine_circuit_open",
        )
    }
    assert gauges == {
        "imagine_store_up": 1,
        "imagine_jobs_active": 2,
        "imagine_jobs_stuck": 1,
        "imagine_reconcile_overdue": 1,
        "imagine_runware_in_flight": 0,
        "imagine_runware_in_flight_limit": uc.settings.runware_max_in_flight,
        "imagine_budget_waiters": 1,
        "imagine_dead_letters": 1,
        "imagine_submissions_paused": 1,
        "imagine_submissions_held": 1,
        "imagine_circuit_open": 1,
    }
    model = (("model", "xai:grok-imagine@image"),)
    assert found[("imagine_model_circuit_open", model)] == 1


def test_in_flight_images_are_counted_from_their_leases(use_cases: UseCases) -> None:
    uc = use_cases
    uc.submitted(numberResults=2)

    _content_type, found = scrape(uc)

    assert found[("imagine_runware_in_flight", ())] == 2
    assert found[("imagine_circuit_open", ())] == 0
    assert found[("imagine_submissions_paused", ())] == 0
    assert not any(name == "imagine_model_circuit_open" for name, _labels in found)


# ------------------------------------------------------------------ the worker's server


def test_the_worker_metrics_server_serves_and_a_taken_port_names_the_setting() -> None:
    port = supervise.free_port()
    settings = Settings.from_env({"WORKER_METRICS_PORT": str(port)})
    running = serve_metrics(settings)
    assert running is not None
    try:
        metrics.job_created("acme")
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert answer.status_code == 200
        assert samples(answer.text)[("imagine_jobs_created_total", (("tenant", "acme"),))] >= 1
        with pytest.raises(SettingsError, match=f"WORKER_METRICS_PORT {port} .* already in use"):
            serve_metrics(settings)
    finally:
        running.close()
    assert serve_metrics(Settings.from_env({})) is None  # 0: no server


def worker_env(redis_server: str, metrics_dir: Path, port: int) -> dict[str, str]:
    env = servers.scrubbed_environ()
    env.update(
        REDIS_URL=f"{redis_server.rsplit('/', 1)[0]}/3",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        WORKER_METRICS_PORT=str(port),
        WORKER_METRICS_ADDRESS="127.0.0.1",
        LOG_FORMAT="text",
        PYTHONUNBUFFERED="1",
    )
    return env


def worker(name: str, env: dict[str, str], log_dir: Path) -> supervise.ManagedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "workers.worker", "worker", "-Q", "submit",
            "-c", "2", "--pool", "prefork", "--hostname", f"{name}@%h", "-l", "INFO"]  # fmt: skip
    return supervise.ManagedProcess(name, argv, log_dir=log_dir, env=env)


def test_a_worker_serves_what_its_pool_children_count(redis_server: str, tmp_path: Path) -> None:
    port = supervise.free_port()
    env = worker_env(redis_server, tmp_path / "metrics", port)
    (tmp_path / "metrics").mkdir()
    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        client.flushdb()
    url = f"http://127.0.0.1:{port}/metrics"
    with worker("metrics-worker", env, tmp_path / "logs") as process:
        supervise.wait_for_http(url, 60, process=process)
        producer = Celery("client", broker=env["REDIS_URL"])
        request = {"positivePrompt": "a lighthouse", "width": 1024, "height": 1024}
        try:
            for _ in range(2):
                producer.send_task("imagine.create_job", args=[request, "acme"], queue="submit")
        finally:
            producer.close()

        def created() -> bool:
            found = samples(httpx.get(url, timeout=5).text)
            return found.get(("imagine_jobs_created_total", (("tenant", "acme"),))) == 2

        supervise.poll_until(created, 60, "two jobs counted by the pool", process)
        # Counted in the pool's children, served by the main process.
        assert len(list((tmp_path / "metrics").glob("counter_*.db"))) >= 2


def test_a_worker_whose_metrics_port_is_taken_stops_and_names_the_setting(
    redis_server: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "metrics").mkdir()
        env = worker_env(redis_server, tmp_path / "metrics", port)
        process = worker("metrics-taken", env, tmp_path / "logs").start()
        try:
            code = process.wait(timeout=60)
        finally:
            process.stop()
    assert code != 0
    assert f"WORKER_METRICS_PORT {port}" in process.log_text()
    assert "already in use" in process.log_text()
