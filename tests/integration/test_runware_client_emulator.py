"""RunwareClient over real HTTP against the emulator: acknowledgements, refusals, polling, cost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from infra import supervise
from pipeline.errors import ProviderError
from pipeline.runware import RunwareClient
from pipeline.schemas import ProviderResult

pytestmark = pytest.mark.integration

MODEL = "xai:grok-imagine@image-pro"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def unused_url() -> str:
    """A local URL nothing listens on: webhooks and PUTs sent there go nowhere."""
    return f"http://127.0.0.1:{supervise.free_port()}"


@pytest.fixture
def control(emulator: str) -> Iterator[httpx.Client]:
    """A client of the emulator's /_emulator controls; deliveries are off unless a test says."""
    with httpx.Client(base_url=f"{emulator}/_emulator", timeout=10) as client:
        configure(client, deliveries=False)
        yield client


@pytest.fixture
def runware(emulator: str, emulator_api_key: str) -> Iterator[RunwareClient]:
    client = RunwareClient(httpx.Client(timeout=10), emulator_api_key, f"{emulator}/v1")
    yield client
    client.close()


def configure(control: httpx.Client, **switches: Any) -> None:
    response = control.patch("/config", json=switches)
    assert response.status_code == 200, response.text


def inference(unused_url: str, **overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "positivePrompt": "a red fox in the snow",
        "resolution": "1K",
        "deliveryMethod": "async",
        "webhookURL": f"{unused_url}/webhooks/runware/x?token=t",
        "outputType": "URL",
        "outputFormat": "PNG",
        "includeCost": True,
        "numberResults": 1,
    }
    task.update(overrides)
    return task


def poll_until_done(
    runware: RunwareClient, task_uuid: str, count: int = 1, timeout: float = 20.0
) -> list[ProviderResult]:
    """getResponse until `count` items finished, within a deadline."""
    deadline = time.monotonic() + timeout
    results: list[ProviderResult] = []
    while time.monotonic() < deadline:
        results = runware.get_response(task_uuid)
        if len(results) == count and all(r.status != "processing" for r in results):
            return results
        time.sleep(0.05)
    raise AssertionError(f"task {task_uuid} not done in {timeout}s: {results}")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize("ack_status", [False, True])
def test_an_async_task_is_accepted(
    runware: RunwareClient, control: httpx.Client, unused_url: str, ack_status: bool
) -> None:
    configure(control, ack_status=ack_status)
    task = inference(unused_url)

    outcomes = runware.submit([task])

    outcome = outcomes[task["taskUUID"]]
    assert outcome.accepted
    assert outcome.error is None
    assert outcome.results == []  # an acknowledgement is not a result
    detail = control.get(f"/tasks/{task['taskUUID']}").json()
    assert detail["deliveryMethod"] == "async"
    assert detail["webhookURL"] == task["webhookURL"]


def test_one_invalid_task_is_refused_and_the_other_accepted(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    good = inference(unused_url)
    bad = inference(unused_url, width=1000, height=1000)
    del bad["resolution"]

    outcomes = runware.submit([good, bad])

    assert set(outcomes) == {good["taskUUID"], bad["taskUUID"]}
    assert outcomes[good["taskUUID"]].accepted
    assert outcomes[good["taskUUID"]].error is None
    refused = outcomes[bad["taskUUID"]]
    assert not refused.accepted
    assert refused.error is not None
    assert refused.error.kind == ProviderError.PERMANENT
    assert refused.error.provider_code == "unsupportedDimensions"
    assert refused.error.parameter == "width"
    assert refused.error.task_uuid == bad["taskUUID"]
    assert control.get(f"/tasks/{bad['taskUUID']}").status_code == 404


@pytest.mark.parametrize("conflict_status", [400, 409, 200])
def test_resubmitting_a_task_uuid_counts_as_accepted(
    runware: RunwareClient, control: httpx.Client, unused_url: str, conflict_status: int
) -> None:
    configure(control, conflict_status=conflict_status)
    task = inference(unused_url)
    assert runware.submit([task])[task["taskUUID"]].accepted

    again = runware.submit([task])[task["taskUUID"]]

    assert again.accepted
    assert again.error is None
    assert control.get("/stats").json()["tasks_accepted"] == 1


def test_a_conflict_beside_a_new_task_accepts_both(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    configure(control, conflict_status=409)
    old = inference(unused_url)
    runware.submit([old])
    new = inference(unused_url)

    outcomes = runware.submit([old, new])

    assert outcomes[old["taskUUID"]].accepted and outcomes[old["taskUUID"]].error is None
    assert outcomes[new["taskUUID"]].accepted and outcomes[new["taskUUID"]].error is None


def test_a_wrong_api_key_is_an_account_error(
    emulator: str, control: httpx.Client, unused_url: str
) -> None:
    wrong = RunwareClient(httpx.Client(timeout=10), "not-the-key", f"{emulator}/v1")
    try:
        with pytest.raises(ProviderError) as raised:
            wrong.submit([inference(unused_url)])
    finally:
        wrong.close()

    assert raised.value.kind == ProviderError.ACCOUNT
    assert raised.value.provider_code == "invalidApiKey"
    assert raised.value.http_status == 401
    assert control.get("/stats").json()["tasks_accepted"] == 0


def test_an_unavailable_model_is_a_model_error(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    configure(control, model_unavailable=True)
    task = inference(unused_url)

    outcome = runware.submit([task])[task["taskUUID"]]

    assert not outcome.accepted
    assert outcome.error is not None
    assert outcome.error.kind == ProviderError.MODEL
    assert outcome.error.provider_code == "unknownModel"
    assert outcome.error.parameter == "model"


def test_a_rate_limited_submit_is_transient_with_its_retry_after(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    configure(control, burst=1, burst_status=429, retry_after_s=3)
    task = inference(unused_url)

    with pytest.raises(ProviderError) as raised:
        runware.submit([task])

    assert raised.value.kind == ProviderError.TRANSIENT
    assert raised.value.retry_after == 3
    assert raised.value.http_status == 429
    assert raised.value.provider_code == "rateLimitExceeded"
    # The burst is spent: the retry with the same taskUUID goes through.
    assert runware.submit([task])[task["taskUUID"]].accepted


@pytest.mark.parametrize("status", [503, 504])
def test_a_queued_submit_fault_is_transient(
    runware: RunwareClient, control: httpx.Client, unused_url: str, status: int
) -> None:
    queued = control.post(
        "/faults/queue", json={"kind": "submit_error", "status": status, "retry_after_s": 2}
    )
    assert queued.status_code == 200, queued.text
    task = inference(unused_url)

    with pytest.raises(ProviderError) as raised:
        runware.submit([task])

    assert (raised.value.kind, raised.value.http_status, raised.value.retry_after) == (
        ProviderError.TRANSIENT,
        status,
        2,
    )
    assert control.get("/faults/queue").json()["queue"] == []
    assert runware.submit([task])[task["taskUUID"]].accepted


def test_get_response_after_completion_returns_the_images(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    task = inference(unused_url, numberResults=2)
    assert runware.submit([task])[task["taskUUID"]].accepted

    results = poll_until_done(runware, task["taskUUID"], count=2)

    assert [r.status for r in results] == ["success", "success"]
    assert all(r.ok for r in results)
    assert len({r.image_uuid for r in results}) == 2
    assert all(r.cost == pytest.approx(0.07) for r in results)
    with httpx.Client(timeout=10) as http:
        for result in results:
            assert result.image_url is not None
            image = http.get(result.image_url)
            assert image.status_code == 200
            assert image.content.startswith(PNG_MAGIC)
    ledger = control.get("/ledger", params={"taskUUID": task["taskUUID"]}).json()
    assert ledger["totals"]["count"] == 2


def test_get_response_while_processing_reports_processing(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    configure(control, latency_ms=5_000)
    task = inference(unused_url)
    assert runware.submit([task])[task["taskUUID"]].accepted

    results = runware.get_response(task["taskUUID"])

    assert [(r.task_uuid, r.status, r.image_uuid) for r in results] == [
        (task["taskUUID"], "processing", None)
    ]


def test_get_response_of_an_unknown_task_reports_it_not_found(
    runware: RunwareClient, control: httpx.Client
) -> None:
    task_uuid = str(uuid.uuid4())

    results = runware.get_response(task_uuid)

    assert [(r.status, r.error_code) for r in results] == [("error", "taskFailedOrNotFound")]


@pytest.mark.parametrize("placement", ["errors", "item"])
def test_a_failed_item_polls_as_an_error_in_either_placement(
    runware: RunwareClient, control: httpx.Client, unused_url: str, placement: str
) -> None:
    configure(
        control, item_error_rate=1, item_error_permanent_share=1, poll_error_placement=placement
    )
    task = inference(unused_url)
    assert runware.submit([task])[task["taskUUID"]].accepted

    (result,) = poll_until_done(runware, task["taskUUID"])

    assert result.task_uuid == task["taskUUID"]
    assert result.status == "error"
    assert not result.ok
    assert result.error_code == "providerContentPolicyViolation"
    assert result.error_message
    assert result.image_uuid is None


@pytest.mark.parametrize(("charge", "charged"), [(False, 0), (True, 1)])
def test_the_ledger_charges_failed_items_only_when_told(
    runware: RunwareClient, control: httpx.Client, unused_url: str, charge: bool, charged: int
) -> None:
    configure(control, item_error_rate=1, item_error_permanent_share=1, charge_errored_items=charge)
    task = inference(unused_url)
    assert runware.submit([task])[task["taskUUID"]].accepted
    (result,) = poll_until_done(runware, task["taskUUID"])
    assert result.status == "error"

    ledger = control.get("/ledger", params={"taskUUID": task["taskUUID"]}).json()

    assert ledger["totals"]["count"] == charged
    assert len(ledger["entries"]) == charged
    if charged:
        (entry,) = ledger["entries"]
        assert (entry["taskUUID"], entry["imageUUID"], entry["outcome"]) == (
            task["taskUUID"],
            None,
            "error",
        )
        assert entry["cost"] == pytest.approx(0.07)
        assert ledger["totals"]["byTask"][task["taskUUID"]]["count"] == 1
    else:
        assert ledger["totals"]["byTask"] == {}


def test_an_accepted_task_with_deliveries_on_is_not_blocked_by_a_dead_webhook(
    runware: RunwareClient, control: httpx.Client, unused_url: str
) -> None:
    configure(control, deliveries=True, webhook_attempts=1)
    task = inference(unused_url)
    assert runware.submit([task])[task["taskUUID"]].accepted

    (result,) = poll_until_done(runware, task["taskUUID"])

    assert result.ok
    wait_for(
        lambda: (
            control.get(f"/tasks/{task['taskUUID']}").json()["slots"][0]["webhookOutcome"]
            == "exhausted"
        )
    )
