"""RunwareClient over httpx.MockTransport: what is sent, and how each answer is sorted."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.config import Settings, SettingsError
from pipeline.errors import ProviderError
from pipeline.runware import ERROR_TABLE, RunwareClient, classify, kind_of_code

pytestmark = pytest.mark.unit

URL = "https://runware.test/v1"
KEY = "rw-test-key"
T1 = "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10"
T2 = "1b2c3d4e-5f60-4718-9a0b-1c2d3e4f5a6b"
IMAGE = "fd43ce5d-bc6d-487f-91d0-5d417cfcdb3c"

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler) -> RunwareClient:
    return RunwareClient(httpx.Client(transport=httpx.MockTransport(handler)), KEY, URL)


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def task(task_uuid: str) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "model": "xai:grok-imagine@image-pro",
        "positivePrompt": "a lighthouse",
        "width": 1024,
        "height": 1024,
        "numberResults": 1,
        "deliveryMethod": "async",
    }


def ack(*uuids: str) -> dict[str, Any]:
    return {"data": [{"taskType": "imageInference", "taskUUID": u} for u in uuids]}


def submit_error(handler: Handler, *uuids: str) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        client_for(handler).submit([task(u) for u in uuids or (T1,)])
    return caught.value


# --- submit -----------------------------------------------------------------------------------


def test_submit_sends_a_json_array_with_bearer_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ack(T1, T2))

    client_for(handler).submit([task(T1), task(T2)])
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == [task(T1), task(T2)]


def test_an_acknowledgement_accepts_every_task() -> None:
    outcomes = client_for(answer(200, ack(T1, T2))).submit([task(T1), task(T2)])
    assert set(outcomes) == {T1, T2}
    for outcome in outcomes.values():
        assert outcome.accepted
        assert outcome.error is None
        assert outcome.results == []


def test_an_acknowledgement_that_already_holds_the_image_carries_it() -> None:
    body = {
        "data": [
            {
                "taskType": "imageInference",
                "taskUUID": T1,
                "status": "success",
                "imageUUID": IMAGE,
                "imageURL": "https://im.runware.ai/x.jpg",
                "cost": 0.07,
            }
        ]
    }
    outcome = client_for(answer(200, body)).submit([task(T1)])[T1]
    assert outcome.accepted
    assert [r.image_uuid for r in outcome.results] == [IMAGE]


@pytest.mark.parametrize("status", [200, 400])
def test_per_task_errors_leave_other_tasks_accepted(status: int) -> None:
    body = {
        **ack(T1),
        "errors": [
            {
                "code": "invalidPositivePrompt",
                "message": "too short",
                "parameter": "positivePrompt",
                "taskType": "imageInference",
                "taskUUID": T2,
            }
        ],
    }
    outcomes = client_for(answer(status, body)).submit([task(T1), task(T2)])
    assert outcomes[T1].accepted and outcomes[T1].error is None
    refused = outcomes[T2]
    assert not refused.accepted
    assert refused.error is not None
    assert refused.error.kind == ProviderError.PERMANENT
    assert refused.error.provider_code == "invalidPositivePrompt"
    assert refused.error.task_uuid == T2


def test_conflict_task_uuid_counts_as_accepted() -> None:
    body = {
        "data": [],
        "errors": [{"code": "conflictTaskUUID", "message": "exists", "taskUUID": T1}],
    }
    outcome = client_for(answer(400, body)).submit([task(T1)])[T1]
    assert outcome.accepted
    assert outcome.error is None


def test_a_task_the_provider_does_not_mention_is_unknown_so_transient() -> None:
    outcomes = client_for(answer(200, ack(T1))).submit([task(T1), task(T2)])
    assert outcomes[T1].accepted
    assert not outcomes[T2].accepted
    assert outcomes[T2].error is not None
    assert outcomes[T2].error.kind == ProviderError.TRANSIENT


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "invalidApiKey"),
        (401, None),
        (402, "insufficientCredits"),
        (402, None),
        (403, "insufficientPermissions"),
        (403, None),
    ],
)
def test_account_failures(status: int, code: str | None) -> None:
    body: dict[str, Any] = (
        {"errors": [{"code": code, "message": "no", "taskType": "authentication"}]} if code else {}
    )
    error = submit_error(answer(status, body))
    assert error.kind == ProviderError.ACCOUNT
    assert error.http_status == status
    assert error.provider_code == code


@pytest.mark.parametrize("code", ["unknownModel", "modelDisabled", "modelUnavailable"])
def test_a_refused_model_on_one_task_is_a_model_error_for_that_task(code: str) -> None:
    body = {
        "data": [],
        "errors": [
            {"code": code, "message": "no such model", "parameter": "model", "taskUUID": T1}
        ],
    }
    outcome = client_for(answer(400, body)).submit([task(T1)])[T1]
    assert not outcome.accepted
    assert outcome.error is not None
    assert outcome.error.kind == ProviderError.MODEL


def test_a_request_refused_for_its_model_is_a_model_error() -> None:
    body = {"errors": [{"code": "modelDisabled", "message": "disabled", "parameter": "model"}]}
    assert submit_error(answer(400, body)).kind == ProviderError.MODEL


def test_a_conflict_without_a_task_uuid_is_the_one_task_sent() -> None:
    body = {"errors": [{"code": "conflictTaskUUID", "message": "exists"}]}
    for status in (200, 400, 409):
        outcome = client_for(answer(status, body)).submit([task(T1)])[T1]
        assert outcome.accepted and outcome.error is None


def test_a_conflict_without_a_task_uuid_is_matched_by_elimination() -> None:
    body = {**ack(T1), "errors": [{"code": "conflictTaskUUID", "message": "exists"}]}
    outcomes = client_for(answer(200, body)).submit([task(T1), task(T2)])
    assert outcomes[T1].accepted and outcomes[T2].accepted
    assert outcomes[T2].error is None


def test_as_many_untied_conflicts_as_tasks_left_accept_each() -> None:
    body = {"data": [], "errors": [{"code": "conflictTaskUUID"}, {"code": "conflictTaskUUID"}]}
    outcomes = client_for(answer(409, body)).submit([task(T1), task(T2)])
    assert outcomes[T1].accepted and outcomes[T2].accepted


def test_an_ambiguous_untied_conflict_leaves_the_tasks_unacknowledged() -> None:
    t3 = "2c3d4e5f-6071-4829-8a1b-2c3d4e5f6a7b"
    body = {**ack(T1), "errors": [{"code": "conflictTaskUUID"}]}
    outcomes = client_for(answer(200, body)).submit([task(T1), task(T2), task(t3)])
    assert outcomes[T1].accepted
    for left in (T2, t3):
        error = outcomes[left].error
        assert not outcomes[left].accepted and error is not None
        assert error.kind == ProviderError.TRANSIENT, "sent again under the same taskUUID"


def test_an_unknown_code_on_one_task_is_unknown_not_permanent() -> None:
    body = {"data": [], "errors": [{"code": "somethingNew", "message": "?", "taskUUID": T1}]}
    error = client_for(answer(400, body)).submit([task(T1)])[T1].error
    assert error is not None and error.kind == ProviderError.UNKNOWN


def test_429_with_retry_after_is_transient() -> None:
    error = submit_error(
        answer(
            429,
            {"errors": [{"code": "tooManyRequests", "message": "queue full"}]},
            {"Retry-After": "7"},
        )
    )
    assert error.kind == ProviderError.TRANSIENT
    assert error.retry_after == pytest.approx(7.0)
    assert error.http_status == 429


def test_retry_after_as_a_past_http_date_means_now() -> None:
    error = submit_error(answer(503, {}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert error.kind == ProviderError.TRANSIENT
    assert error.retry_after == 0.0


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_overload_and_server_errors_are_transient(status: int) -> None:
    error = submit_error(answer(status, {"errors": [{"code": "serverError", "message": "busy"}]}))
    assert error.kind == ProviderError.TRANSIENT
    assert error.retry_after is None


def test_an_invalid_parameter_is_permanent_and_keeps_the_details() -> None:
    body = {
        "errors": [
            {
                "code": "invalidWidth",
                "message": "Invalid width",
                "parameter": "width",
                "min": 128,
                "max": 2816,
            }
        ]
    }
    error = submit_error(answer(400, body))
    assert error.kind == ProviderError.PERMANENT
    assert (error.provider_code, error.message, error.parameter) == (
        "invalidWidth",
        "Invalid width",
        "width",
    )
    assert error.http_status == 400


def test_an_invalid_parameter_tied_to_a_task_keeps_the_details() -> None:
    body = {
        "errors": [
            {
                "code": "invalidWidth",
                "message": "Invalid width",
                "parameter": ["width", "height"],
                "taskUUID": T1,
            }
        ]
    }
    error = client_for(answer(400, body)).submit([task(T1)])[T1].error
    assert error is not None
    assert error.kind == ProviderError.PERMANENT
    assert (error.provider_code, error.message, error.parameter) == (
        "invalidWidth",
        "Invalid width",
        ["width", "height"],
    )


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_failures_are_transient(exc: httpx.TransportError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    error = submit_error(handler)
    assert error.kind == ProviderError.TRANSIENT
    assert error.http_status is None
    assert KEY not in error.message


@pytest.mark.parametrize("status", [200, 502])
def test_a_body_that_is_not_json_is_transient(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="<html>Bad gateway</html>")

    error = submit_error(handler)
    assert error.kind == ProviderError.TRANSIENT
    assert error.http_status == status


def test_a_non_json_client_error_is_permanent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text="bad request")

    assert submit_error(handler).kind == ProviderError.PERMANENT


def test_an_unreadable_acknowledgement_is_transient() -> None:
    error = submit_error(answer(200, {"data": [{"taskType": "imageInference"}]}))
    assert error.kind == ProviderError.TRANSIENT


# --- getResponse ------------------------------------------------------------------------------


def test_get_response_sends_exactly_the_poll_task() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"data": []})

    assert client_for(handler).get_response(T1) == []
    assert seen == [[{"taskType": "getResponse", "taskUUID": T1}]]


def test_get_response_reads_processing_and_finished_items() -> None:
    body = {
        "data": [
            {
                "taskType": "imageInference",
                "taskUUID": T1,
                "status": "success",
                "imageUUID": IMAGE,
                "imageURL": "https://im.runware.ai/a.jpg",
                "seed": 11,
                "cost": 0.07,
            },
            {"taskType": "imageInference", "taskUUID": T1, "status": "processing", "progress": 50},
            {"taskType": "imageInference", "taskUUID": T2, "status": "success", "imageUUID": "x"},
        ]
    }
    results = client_for(answer(200, body)).get_response(T1)
    assert [r.status for r in results] == ["success", "processing"]
    assert results[0].image_uuid == IMAGE
    assert results[0].seed == 11


def test_get_response_reads_errors_in_the_errors_array() -> None:
    body = {
        "data": [],
        "errors": [
            {
                "code": "providerContentPolicyViolation",
                "status": "error",
                "message": "refused",
                "taskUUID": T1,
                "documentation": "https://runware.ai/docs",
            }
        ],
    }
    [result] = client_for(answer(200, body)).get_response(T1)
    assert (result.status, result.error_code, result.error_message) == (
        "error",
        "providerContentPolicyViolation",
        "refused",
    )


def test_get_response_reads_a_nested_item_error() -> None:
    body = {
        "data": [
            {
                "taskType": "imageInference",
                "taskUUID": T1,
                "status": "error",
                "error": {"code": "timeoutProvider", "message": "too slow"},
            }
        ]
    }
    [result] = client_for(answer(200, body)).get_response(T1)
    assert (result.status, result.error_code) == ("error", "timeoutProvider")


def test_get_response_raises_not_found_for_an_untied_not_found() -> None:
    body = {"errors": [{"code": "taskFailedOrNotFound", "message": "gone"}]}
    with pytest.raises(ProviderError) as caught:
        client_for(answer(400, body)).get_response(T1)
    assert caught.value.kind == ProviderError.NOT_FOUND


def test_get_response_reads_an_untied_error_of_a_2xx_as_the_polled_tasks() -> None:
    body = {"data": [], "errors": [{"code": "taskFailedOrNotFound", "message": "gone"}]}
    [result] = client_for(answer(200, body)).get_response(T1)
    assert (result.task_uuid, result.status, result.error_code) == (
        T1,
        "error",
        "taskFailedOrNotFound",
    )


def test_get_response_reads_a_task_error_sent_with_an_error_status() -> None:
    body = {"errors": [{"code": "taskFailedOrNotFound", "message": "gone", "taskUUID": T1}]}
    [result] = client_for(answer(400, body)).get_response(T1)
    assert (result.status, result.error_code) == ("error", "taskFailedOrNotFound")


@pytest.mark.parametrize(
    ("status", "kind"), [(401, ProviderError.ACCOUNT), (503, ProviderError.TRANSIENT)]
)
def test_get_response_raises_when_the_request_failed(status: int, kind: str) -> None:
    with pytest.raises(ProviderError) as caught:
        client_for(answer(status, {})).get_response(T1)
    assert caught.value.kind == kind


def test_from_settings_requires_a_key() -> None:
    with (
        httpx.Client(transport=httpx.MockTransport(answer(200, {}))) as http,
        pytest.raises(SettingsError, match="RUNWARE_API_KEY"),
    ):
        RunwareClient.from_settings(Settings(), http=http)


# --- the error table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "conflictTaskUUID", ProviderError.CONFLICT),
        (None, "conflictTaskUUID", ProviderError.CONFLICT),
        (400, "taskFailedOrNotFound", ProviderError.NOT_FOUND),
        (None, "taskFailedOrNotFound", ProviderError.NOT_FOUND),
        (401, "invalidApiKey", ProviderError.ACCOUNT),
        (401, None, ProviderError.ACCOUNT),
        (402, None, ProviderError.ACCOUNT),
        (403, None, ProviderError.ACCOUNT),
        (400, "missingApiKey", ProviderError.ACCOUNT),
        (400, "insufficientPermissions", ProviderError.ACCOUNT),
        (400, "insufficientCredits", ProviderError.ACCOUNT),
        (400, "accountBalanceTooLow", ProviderError.ACCOUNT),
        (400, "monthlyQuotaExceeded", ProviderError.ACCOUNT),
        (400, "unknownModel", ProviderError.MODEL),
        (400, "modelDisabled", ProviderError.MODEL),
        (400, "modelUnavailable", ProviderError.MODEL),
        (500, "internalServerError", ProviderError.TRANSIENT),
        (503, "serviceUnavailable", ProviderError.TRANSIENT),
        (400, "noAvailableServer", ProviderError.TRANSIENT),
        (400, "timeoutProvider", ProviderError.TRANSIENT),
        (400, "serverError", ProviderError.TRANSIENT),
        (400, "apiRateLimitExceeded", ProviderError.TRANSIENT),
        (400, "inferenceError", ProviderError.TRANSIENT),
        (None, None, ProviderError.TRANSIENT),
        (408, None, ProviderError.TRANSIENT),
        (429, None, ProviderError.TRANSIENT),
        (429, "rateLimitExceeded", ProviderError.TRANSIENT),
        (500, None, ProviderError.TRANSIENT),
        (503, None, ProviderError.TRANSIENT),
        (504, None, ProviderError.TRANSIENT),
        (599, None, ProviderError.TRANSIENT),
        (400, None, ProviderError.PERMANENT),
        (404, None, ProviderError.PERMANENT),
        (422, None, ProviderError.PERMANENT),
        (400, "queueCapacityReached", ProviderError.PERMANENT),
        (400, "invalidWidth", ProviderError.PERMANENT),
        (400, "unsupportedDimensions", ProviderError.PERMANENT),
        (400, "unknownParameter", ProviderError.PERMANENT),
        (400, "incompatibleParameters", ProviderError.PERMANENT),
        (400, "providerContentPolicyViolation", ProviderError.PERMANENT),
    ],
)
def test_classify(status: int | None, code: str | None, kind: str) -> None:
    assert classify(status, code) == kind


@pytest.mark.parametrize(
    ("code", "parameter", "kind"),
    [
        ("somethingNew", None, ProviderError.UNKNOWN),
        (None, None, ProviderError.UNKNOWN),
        ("timeoutProvider", None, ProviderError.TRANSIENT),
        ("invalidPositivePrompt", "positivePrompt", ProviderError.PERMANENT),
        ("invalidModel", "model", ProviderError.MODEL),
        ("somethingNew", "model", ProviderError.MODEL),
        ("insufficientCredits", "model", ProviderError.ACCOUNT),
    ],
)
def test_an_item_code_by_the_table(code: str | None, parameter: str | None, kind: str) -> None:
    assert kind_of_code(code, parameter) == kind


def test_every_row_of_the_table_names_a_known_kind() -> None:
    kinds = {
        ProviderError.TRANSIENT,
        ProviderError.PERMANENT,
        ProviderError.ACCOUNT,
        ProviderError.MODEL,
        ProviderError.CONFLICT,
        ProviderError.NOT_FOUND,
    }
    assert {kind for _, kind in ERROR_TABLE} <= kinds
    codes = [pattern for pattern, _ in ERROR_TABLE]
    assert len(codes) == len(set(codes))
