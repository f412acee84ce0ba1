"""The emulator's provider-reality switches over HTTP: each wire answer, and the ledger after it."""

from __future__ import annotations

from typing import Any

import pytest

from infra.emulator import EmulatorConfig
from tests.integration import test_emulator_http as http_suite
from tests.integration.test_emulator_http import Emulator, Receiver, task, wait_for

pytestmark = pytest.mark.integration

# The HTTP suite's fixtures: an emulator on a free port and a receiver of its PUTs and webhooks.
emulator = http_suite.emulator
receiver = http_suite.receiver


def queue(emulator: Emulator, **fault: Any) -> None:
    response = emulator.client.post(f"{emulator.url}/_emulator/faults/queue", json=fault)
    assert response.status_code == 200, response.text


def poll(emulator: Emulator, task_uuid: str) -> Any:
    return emulator.submit({"taskType": "getResponse", "taskUUID": task_uuid})


def charges(emulator: Emulator, task_uuid: str) -> list[dict[str, Any]]:
    ledger = emulator.client.get(f"{emulator.url}/_emulator/ledger", params={"taskUUID": task_uuid})
    entries: list[dict[str, Any]] = ledger.json()["entries"]
    return entries


def test_every_switch_is_settable_from_the_environment() -> None:
    config = EmulatorConfig.from_env(
        {
            "EMULATOR_MODEL_DISABLED": "yes",
            "EMULATOR_UNKNOWN_ITEM_CODE": "0.25",
            "EMULATOR_UNKNOWN_ITEM_CODE_NAME": "brandNewCode",
            "EMULATOR_NOT_FOUND_FOR_LIVE_TASK": "0.5",
            "EMULATOR_CONFLICT_WITHOUT_TASK_UUID": "on",
        }
    )
    assert config.model_disabled and config.conflict_without_task_uuid
    assert (config.unknown_item_code, config.unknown_item_code_name) == (0.25, "brandNewCode")
    assert config.not_found_for_live_task == 0.5


def test_not_found_for_a_rendering_task_and_the_resubmit_is_not_charged(
    emulator: Emulator, receiver: Receiver
) -> None:
    emulator.configure(latency_ms=1500)
    body = task(receiver)
    assert emulator.submit(body).status_code == 200
    queue(emulator, kind="not_found_for_live_task", taskUUID=body["taskUUID"])
    lost = poll(emulator, body["taskUUID"])
    assert lost.status_code == 400
    (error,) = lost.json()["errors"]
    assert (error["code"], error["taskUUID"]) == ("taskFailedOrNotFound", body["taskUUID"])
    # The task lives on: the next poll sees it, and a resubmit under its taskUUID is a conflict.
    assert poll(emulator, body["taskUUID"]).json()["data"][0]["status"] == "processing"
    again = emulator.submit(body)
    assert again.json()["errors"][0]["code"] == "conflictTaskUUID"
    emulator.flush()
    assert len(charges(emulator, body["taskUUID"])) == 1
    assert len(receiver.of("POST", f"/hook/{body['taskUUID']}")) == 1
    assert emulator.control("stats")["polls_not_found"] == 1


def test_not_found_share_for_delivered_tasks(emulator: Emulator, receiver: Receiver) -> None:
    body = task(receiver)
    emulator.submit(body)
    emulator.flush()
    emulator.configure(not_found_for_live_task=1.0)
    for _ in range(3):
        assert poll(emulator, body["taskUUID"]).json()["errors"][0]["code"] == (
            "taskFailedOrNotFound"
        )
    emulator.configure(not_found_for_live_task=0.0)
    assert poll(emulator, body["taskUUID"]).json()["data"][0]["status"] == "success"
    assert emulator.submit(body).json()["errors"][0]["code"] == "conflictTaskUUID"
    emulator.flush()
    assert len(charges(emulator, body["taskUUID"])) == 1


@pytest.mark.parametrize("status", [400, 409, 200])
def test_conflict_without_task_uuid(emulator: Emulator, receiver: Receiver, status: int) -> None:
    emulator.configure(conflict_without_task_uuid=True, conflict_status=status)
    body = task(receiver, numberResults=2)
    assert emulator.submit(body).status_code == 200
    again = emulator.submit(body)
    assert again.status_code == status
    (error,) = again.json()["errors"]
    assert error["code"] == "conflictTaskUUID"
    assert "taskUUID" not in error
    emulator.flush()
    assert sorted(c["index"] for c in charges(emulator, body["taskUUID"])) == [0, 1]
    assert emulator.control("ledger")["totals"]["count"] == 2


def test_conflict_names_its_task_by_default(emulator: Emulator, receiver: Receiver) -> None:
    body = task(receiver)
    emulator.submit(body)
    error = emulator.submit(body).json()["errors"][0]
    assert (error["code"], error["taskUUID"]) == ("conflictTaskUUID", body["taskUUID"])
    emulator.flush()


def test_unknown_item_code(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(unknown_item_code=1.0)
    body = task(receiver, numberResults=2)
    assert emulator.submit(body).status_code == 200
    emulator.flush()
    hooks = receiver.of("POST", f"/hook/{body['taskUUID']}")
    assert [h.json()["errors"][0]["code"] for h in hooks] == ["weirdNewFailure"] * 2
    assert receiver.of("PUT", f"/put/{body['taskUUID']}") == []
    polled = poll(emulator, body["taskUUID"]).json()
    assert [e["code"] for e in polled["errors"]] == ["weirdNewFailure"] * 2
    assert charges(emulator, body["taskUUID"]) == []
    # Charged when the provider charges failed items, once per image.
    emulator.configure(charge_errored_items=True, unknown_item_code_name="brandNewCode")
    charged = task(receiver)
    emulator.submit(charged)
    emulator.flush()
    assert poll(emulator, charged["taskUUID"]).json()["errors"][0]["code"] == "brandNewCode"
    assert [c["outcome"] for c in charges(emulator, charged["taskUUID"])] == ["error"]


def test_unknown_item_code_share_is_seeded(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(unknown_item_code=0.5)
    body = task(receiver, numberResults=8)
    emulator.submit(body)
    emulator.flush()
    statuses = emulator.control(f"tasks/{body['taskUUID']}")["statuses"]
    failed = statuses.count("error")
    assert 0 < failed < 8
    assert len(charges(emulator, body["taskUUID"])) == 8 - failed


def test_model_disabled_refuses_and_recovers(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(model_disabled=True)
    body = task(receiver)
    refused = emulator.submit(body)
    assert refused.status_code == 400
    (error,) = refused.json()["errors"]
    assert (error["code"], error["parameter"], error["taskUUID"]) == (
        "modelDisabled",
        "model",
        body["taskUUID"],
    )
    assert http_suite.MODEL in error["message"]
    assert emulator.control("ledger")["totals"]["count"] == 0
    assert emulator.control("tasks")["tasks"] == []
    # The model comes back: the same taskUUID is accepted and charged once.
    emulator.configure(model_disabled=False)
    assert emulator.submit(body).json()["data"][0]["taskUUID"] == body["taskUUID"]
    emulator.flush()
    wait_for(lambda: receiver.of("POST", f"/hook/{body['taskUUID']}"))
    assert len(charges(emulator, body["taskUUID"])) == 1


def test_model_disabled_is_not_unknown_model(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(model_unavailable=True)
    assert emulator.submit(task(receiver)).json()["errors"][0]["code"] == "unknownModel"
    emulator.configure(model_unavailable=False, model_disabled=True)
    assert emulator.submit(task(receiver)).json()["errors"][0]["code"] == "modelDisabled"
