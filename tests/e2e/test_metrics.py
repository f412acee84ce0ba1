"""After jobs run end to end, the receiver, the workers and Flower serve every metric the alert
rules and the dashboard read, and a Prometheus with the stack's config scrapes them all."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import debian, monitoring, servers, supervise
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


class Flower:
    def __init__(self, service: supervise.Service, basic_auth: str) -> None:
        assert service.url is not None
        self.service = service
        self.url = service.url
        self.basic_auth = basic_auth
        user, _, password = basic_auth.partition(":")
        self.auth = (user, password)


@pytest.fixture(scope="module")
def flower(pipeline: Pipeline, tmp_workdir: Path) -> Iterator[Flower]:
    basic_auth = servers.flower_basic_auth()
    service = servers.start_flower(
        tmp_workdir / "flower-metrics", pipeline.env, basic_auth=basic_auth,
        log_dir=tmp_workdir / "logs",
    )  # fmt: skip
    try:
        yield Flower(service, basic_auth)
    finally:
        service.stop()


def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)
    return value


def _targets(stack: Pipeline, flower: Flower) -> list[monitoring.ScrapeTarget]:
    return monitoring.scrape_targets([*stack.services, flower.service], flower.basic_auth)


def _served(targets: list[monitoring.ScrapeTarget]) -> set[str]:
    """The sample names every target serves right now (nothing from a target that is not up)."""
    names: set[str] = set()
    for target in targets:
        auth = None
        if target.basic_auth is not None:
            user, _, password = target.basic_auth.partition(":")
            auth = (user, password)
        try:
            response = httpx.get(target.url, auth=auth, timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            names |= monitoring.exposed_names(response.text)
    return names


def _run_jobs(stack: Pipeline, callback_url: str) -> None:
    """A webhook with a wrong token, a job that is stored and called back, and one whose image
    dies after its attempts."""
    refused = httpx.post(
        f"{stack.receiver_url}/webhooks/runware/{uuid.uuid4()}",
        params={"token": "not-the-token"}, json={"data": []}, timeout=10,
    )  # fmt: skip
    assert refused.status_code == 401
    stored = stack.submit(
        {"positivePrompt": "metrics: stored", "resolution": "1K", "numberResults": 2,
         "callbackURL": callback_url}
    )  # fmt: skip
    assert stack.wait(stored["id"])["state"] == "succeeded"
    stack.emulator(item_error_rate=1.0, item_error_permanent_share=0.0)
    dead = stack.submit({"positivePrompt": "metrics: dead", "resolution": "1K"})
    assert stack.wait(dead["id"])["state"] == "failed"


def test_every_metric_the_rules_and_dashboard_read_is_served(
    stack: Pipeline, flower: Flower, callback_url: str
) -> None:
    with httpx.Client(base_url=flower.url, auth=flower.auth, timeout=30) as client:
        # Flower turns the workers' task events on once it sees them; jobs come after that.
        _poll(lambda: client.get("/api/workers").json(), 60, "Flower to see a worker")
    targets = _targets(stack, flower)
    assert {target.job for target in targets} == {
        "imagine-receiver", "imagine-worker", "imagine-flower",
    }  # fmt: skip
    _run_jobs(stack, callback_url)
    expressions = {**monitoring.rule_expressions(), **monitoring.dashboard_expressions()}
    wanted = {name for expr in expressions.values() for name in monitoring.metric_names(expr)}
    assert any(name.startswith("flower_") for name in wanted)
    missing = set(wanted)

    def all_served() -> bool:
        # A name counts once any scrape showed it: a gauge may come and go between scrapes.
        missing.difference_update(_served(targets))
        return not missing

    try:
        _poll(all_served, 60, "every metric to be served")
    except AssertionError:
        users = {name: sorted(w for w, e in expressions.items() if name in e) for name in missing}
        raise AssertionError(f"metrics named but not served: {users}") from None
    # The outcome the rejected-webhooks alert counts is the one the receiver gives a bad token.
    receiver = httpx.get(f"{stack.receiver_url}/metrics", timeout=10).text
    assert re.search(r'^imagine_webhooks_total\{outcome="unauthorized"\} [1-9]', receiver, re.M)


@pytest.fixture(scope="module")
def prometheus_executable() -> str:
    found = debian.ensure_command("prometheus", "prometheus")
    if found is None:
        pytest.fail("prometheus is missing and `apt-get install -y prometheus` did not install it")
    return found


def test_prometheus_scrapes_every_process_and_loads_the_rules(
    stack: Pipeline, flower: Flower, prometheus_executable: str, tmp_path: Path
) -> None:
    targets = _targets(stack, flower)
    config = monitoring.write_prometheus_config(
        tmp_path / "prometheus.yml", monitoring.prometheus_config(targets, interval="1s")
    )
    service = servers.start_prometheus(
        tmp_path, config, executable=prometheus_executable, log_dir=tmp_path / "logs"
    )
    try:
        with httpx.Client(base_url=f"{service.url}/api/v1", timeout=10) as api:

            def scraped() -> list[dict[str, Any]] | None:
                active = api.get("/targets").json()["data"]["activeTargets"]
                up = len(active) == len(targets) and all(t["health"] == "up" for t in active)
                return active if up else None

            try:
                active = _poll(scraped, 60, "every target up")
            except AssertionError:
                raise AssertionError(api.get("/targets").json()["data"]["activeTargets"]) from None
            assert {t["labels"]["job"] for t in active} == {target.job for target in targets}
            groups = api.get("/rules", params={"type": "alert"}).json()["data"]["groups"]
            loaded = {rule["name"] for group in groups for rule in group["rules"]}
            assert loaded == set(monitoring.rule_expressions())
    finally:
        service.stop()
