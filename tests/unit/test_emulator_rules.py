"""The emulator's wire rules through Flask's test client: validation, auth, acks, costs."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from infra.emulator import EmulatorConfig, close_app, create_app
from infra.emulator.catalog import ALLOWED_SIZES, DIMENSIONS
from infra.emulator.config import ConfigError

pytestmark = pytest.mark.unit

MODEL = "xai:grok-imagine@image-pro"
KEY = "test-key"
FIXTURES = Path("/work/shared/fixtures/model-page-examples.json")
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def app() -> Iterator[Flask]:
    flask_app = create_app(EmulatorConfig(api_keys=[KEY], deliveries=False, seed=7))
    yield flask_app
    flask_app.extensions["runware_emulator"].wait_idle(10)
    close_app(flask_app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def task(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "positivePrompt": "a lighthouse at dusk",
        "width": 1024,
        "height": 1024,
        "deliveryMethod": "async",
    }
    for name, value in overrides.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def post(client: FlaskClient, tasks: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1", json=tasks, headers=AUTH if headers is None else headers)


def png_data_uri(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_table_has_26_sizes() -> None:
    assert len(ALLOWED_SIZES) == 26


@pytest.mark.parametrize(("width", "height"), sorted(ALLOWED_SIZES))
def test_every_listed_size_is_accepted(client: FlaskClient, width: int, height: int) -> None:
    body = task(width=width, height=height)
    response = post(client, [body])
    assert response.status_code == 200
    assert response.get_json() == {
        "data": [{"taskType": "imageInference", "taskUUID": body["taskUUID"]}]
    }


VIOLATIONS = [
    ({"taskUUID": None}, "missingParameter", "taskUUID"),
    ({"taskUUID": "not-a-uuid"}, "invalidTaskUUID", "taskUUID"),
    ({"model": "runware:101@1"}, "unknownModel", "model"),
    ({"model": None}, "missingParameter", "model"),
    ({"positivePrompt": None}, "missingParameter", "positivePrompt"),
    ({"positivePrompt": ""}, "invalidPositivePrompt", "positivePrompt"),
    ({"width": None, "height": None}, "missingParameter", "resolution"),
    ({"resolution": "1K"}, "incompatibleParameters", "resolution"),
    ({"height": None}, "missingParameter", "height"),
    ({"width": None}, "missingParameter", "width"),
    ({"width": 1000, "height": 1000}, "unsupportedDimensions", "width"),
    ({"width": 896, "height": 896}, "unsupportedDimensions", "width"),
    ({"width": "1024"}, "invalidWidth", "width"),
    ({"width": None, "height": None, "resolution": "4K"}, "invalidResolution", "resolution"),
    ({"numberResults": 0}, "invalidNumberResults", "numberResults"),
    ({"numberResults": 21}, "invalidNumberResults", "numberResults"),
    ({"outputQuality": 19}, "invalidOutputQuality", "outputQuality"),
    ({"outputQuality": 100}, "invalidOutputQuality", "outputQuality"),
    ({"outputFormat": "GIF"}, "invalidOutputFormat", "outputFormat"),
    ({"outputType": "url"}, "invalidOutputType", "outputType"),
    ({"deliveryMethod": "later"}, "invalidDeliveryMethod", "deliveryMethod"),
    ({"ttl": 59}, "invalidTtl", "ttl"),
    ({"seed": 42}, "unknownParameter", "seed"),
    ({"negativePrompt": "blur"}, "unknownParameter", "negativePrompt"),
    ({"safety": {"mode": "full"}}, "invalidSafetyMode", "safety.mode"),
    ({"safety": {"checkContent": "yes"}}, "invalidCheckContent", "safety.checkContent"),
    ({"inputs": {"referenceImages": []}}, "invalidReferenceImages", "inputs.referenceImages"),
    ({"inputs": {"maskImage": "x"}}, "unknownParameter", "inputs.maskImage"),
    ({"webhookURL": "ftp://x"}, "invalidWebhookURL", "webhookURL"),
    ({"uploadEndpoint": 5}, "invalidUploadEndpoint", "uploadEndpoint"),
    ({"includeCost": "true"}, "invalidIncludeCost", "includeCost"),
]


@pytest.mark.parametrize(("change", "code", "parameter"), VIOLATIONS)
def test_violations_are_refused(
    client: FlaskClient, change: dict[str, Any], code: str, parameter: str
) -> None:
    body = task(**change)
    response = post(client, [body])
    assert response.status_code == 400
    (error,) = response.get_json()["errors"]
    assert (error["code"], error["parameter"]) == (code, parameter)
    assert error["taskType"] == "imageInference"
    assert error["message"]
    assert error["documentation"].startswith("https://")
    if isinstance(body.get("taskUUID"), str):
        assert error["taskUUID"] == body["taskUUID"]


def test_range_errors_carry_bounds_and_enums_allowed_values(client: FlaskClient) -> None:
    error = post(client, [task(numberResults=30)]).get_json()["errors"][0]
    assert (error["min"], error["max"]) == (1, 20)
    error = post(client, [task(outputQuality=5)]).get_json()["errors"][0]
    assert (error["min"], error["max"]) == (20, 99)
    error = post(client, [task(outputFormat="TIFF")]).get_json()["errors"][0]
    assert error["allowedValues"] == ["JPG", "PNG", "WEBP"]
    error = post(client, [task(width=1000, height=1000)]).get_json()["errors"][0]
    assert "1000x1000" in error["message"]
    assert len(error["allowedValues"]) == 26


def test_output_format_is_case_insensitive(client: FlaskClient) -> None:
    assert post(client, [task(outputFormat="webp")]).status_code == 200


def test_unknown_parameters_pass_when_switched_off(app: Flask, client: FlaskClient) -> None:
    client.patch("/_emulator/config", json={"reject_unknown_parameters": False})
    assert post(client, [task(seed=42)]).status_code == 200


@pytest.mark.parametrize("body", [{"taskType": "imageInference"}, "text", None, []])
def test_body_must_be_a_non_empty_array(client: FlaskClient, body: Any) -> None:
    response = client.post("/v1", data=json.dumps(body), headers=AUTH)
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == "invalidRequestBody"


def test_bearer_auth(client: FlaskClient) -> None:
    assert post(client, [task()]).status_code == 200


def test_authentication_task_is_echoed(client: FlaskClient) -> None:
    body = task()
    response = post(client, [{"taskType": "authentication", "apiKey": KEY}, body], headers={})
    assert response.status_code == 200
    auth, ack = response.get_json()["data"]
    assert auth["taskType"] == "authentication"
    uuid.UUID(auth["connectionSessionUUID"])
    assert ack == {"taskType": "imageInference", "taskUUID": body["taskUUID"]}


def test_wrong_key_is_401(client: FlaskClient) -> None:
    for headers, tasks in (
        ({"Authorization": "Bearer nope"}, [task()]),
        ({}, [{"taskType": "authentication", "apiKey": "nope"}, task()]),
    ):
        response = post(client, tasks, headers=headers)
        assert response.status_code == 401
        assert response.get_json() == {
            "errors": [
                {
                    "code": "invalidApiKey",
                    "message": "Invalid API key.",
                    "parameter": "apiKey",
                    "taskType": "authentication",
                    "documentation": "https://runware.ai/docs/platform/errors",
                }
            ]
        }


def test_missing_key_is_401(client: FlaskClient) -> None:
    response = post(client, [task()], headers={})
    assert response.status_code == 401
    assert response.get_json()["errors"][0]["code"] == "missingApiKey"


def test_any_key_when_none_configured() -> None:
    app = create_app(EmulatorConfig(deliveries=False))
    try:
        client = app.test_client()
        ok = post(client, [task()], headers={"Authorization": "Bearer whatever"})
        assert ok.status_code == 200
        assert post(client, [task()], headers={"Authorization": "Bearer "}).status_code == 401
    finally:
        app.extensions["runware_emulator"].wait_idle(10)
        close_app(app)


def fixture_requests() -> list[dict[str, Any]]:
    return [entry["request"] for entry in json.loads(FIXTURES.read_text())]


def test_model_page_examples_async_with_webhook(client: FlaskClient) -> None:
    tasks = [
        {
            **r,
            "deliveryMethod": "async",
            "webhookURL": "https://hooks.example/runware",
            "includeCost": True,
        }
        for r in fixture_requests()
    ]
    response = post(client, tasks)
    assert response.status_code == 200
    assert response.get_json()["data"] == [
        {"taskType": "imageInference", "taskUUID": t["taskUUID"]} for t in tasks
    ]


def test_model_page_examples_sync(client: FlaskClient) -> None:
    tasks = [{**r, "includeCost": True} for r in fixture_requests()]
    response = post(client, tasks)
    assert response.status_code == 200
    items = response.get_json()["data"]
    assert [i["taskUUID"] for i in items] == [t["taskUUID"] for t in tasks]
    for item in items:
        assert item["cost"] == 0.07
        assert isinstance(item["seed"], int)
        image = client.get(item["imageURL"].replace("http://localhost", ""))
        assert image.status_code == 200
        assert image.mimetype == "image/jpeg"
        assert Image.open(io.BytesIO(image.data)).size == (1280, 896)


def test_mixed_request_keeps_accepted_tasks(client: FlaskClient) -> None:
    good, bad = task(), task(outputQuality=7)
    body = post(client, [good, bad]).get_json()
    assert body["data"] == [{"taskType": "imageInference", "taskUUID": good["taskUUID"]}]
    assert [e["taskUUID"] for e in body["errors"]] == [bad["taskUUID"]]


@pytest.mark.parametrize("status", [400, 409, 200])
def test_conflict_task_uuid_status_switch(client: FlaskClient, status: int) -> None:
    client.patch("/_emulator/config", json={"conflict_status": status})
    body = task()
    assert post(client, [body]).status_code == 200
    again = post(client, [body])
    assert again.status_code == status
    (error,) = again.get_json()["errors"]
    assert (error["code"], error["taskUUID"]) == ("conflictTaskUUID", body["taskUUID"])


def test_ack_status_switch(client: FlaskClient) -> None:
    client.patch("/_emulator/config", json={"ack_status": True})
    ack = post(client, [task()]).get_json()["data"][0]
    assert ack["status"] == "processing"


def test_costs(client: FlaskClient) -> None:
    plain = post(client, [task(deliveryMethod="sync", includeCost=True, numberResults=2)])
    assert [i["cost"] for i in plain.get_json()["data"]] == [0.07, 0.07]
    ref = png_data_uri(64, 64)
    one = task(deliveryMethod="sync", includeCost=True, inputs={"referenceImages": [ref]})
    two = task(deliveryMethod="sync", includeCost=True, inputs={"referenceImages": [ref, ref]})
    assert post(client, [one]).get_json()["data"][0]["cost"] == 0.072
    assert post(client, [two]).get_json()["data"][0]["cost"] == 0.074
    no_cost = post(client, [task(deliveryMethod="sync")]).get_json()["data"][0]
    assert "cost" not in no_cost
    totals = client.get("/_emulator/ledger").get_json()["totals"]
    assert totals["count"] == 5
    assert totals["cost"] == pytest.approx(0.07 * 3 + 0.072 + 0.074)
    assert totals["byTask"][one["taskUUID"]] == {"count": 1, "cost": 0.072}


@pytest.mark.parametrize(
    ("resolution", "reference", "size"),
    [
        ("1K", None, (1024, 1024)),
        ("2K", None, (2048, 2048)),
        (None, (1600, 900), (1408, 768)),
        ("2K", (600, 1200), (1408, 2816)),
        (None, "not-an-image", (1024, 1024)),
    ],
)
def test_sizes_without_width_and_height(
    client: FlaskClient, resolution: str | None, reference: Any, size: tuple[int, int]
) -> None:
    extra: dict[str, Any] = {
        "width": None,
        "height": None,
        "deliveryMethod": "sync",
        "outputType": "base64Data",
        "outputFormat": "PNG",
    }
    if resolution:
        extra["resolution"] = resolution
    if reference is not None:
        ref = png_data_uri(*reference) if isinstance(reference, tuple) else reference
        extra["inputs"] = {"referenceImages": [ref]}
    item = post(client, [task(**extra)]).get_json()["data"][0]
    image = Image.open(io.BytesIO(base64.b64decode(item["imageBase64Data"])))
    assert (image.format, image.size) == ("PNG", size)


def test_data_uri_output_and_safety(client: FlaskClient) -> None:
    body = task(
        deliveryMethod="sync",
        outputType="dataURI",
        outputFormat="WEBP",
        safety={"checkContent": True},
        width=1408,
        height=704,
    )
    item = post(client, [body]).get_json()["data"][0]
    assert item["NSFWContent"] is False
    header, payload = item["imageDataURI"].split(",", 1)
    assert header == "data:image/webp;base64"
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    assert (image.format, image.size) == ("WEBP", (1408, 704))


def test_prompts_give_different_images(client: FlaskClient) -> None:
    datas = []
    for prompt in ("red fox", "blue whale"):
        body = task(deliveryMethod="sync", outputType="base64Data", positivePrompt=prompt)
        datas.append(post(client, [body]).get_json()["data"][0]["imageBase64Data"])
    assert datas[0] != datas[1]


def test_get_response_unknown_task(client: FlaskClient) -> None:
    response = post(client, [{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}])
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == "taskFailedOrNotFound"


@pytest.mark.parametrize("placement", ["errors", "item"])
def test_get_response_after_item_errors(app: Flask, client: FlaskClient, placement: str) -> None:
    client.patch("/_emulator/config", json={"poll_error_placement": placement})
    body = task(numberResults=3)
    queued = {
        "kind": "item_error",
        "count": 1,
        "taskUUID": body["taskUUID"],
        "code": "providerContentPolicyViolation",
    }
    assert client.post("/_emulator/faults/queue", json=queued).status_code == 200
    post(client, [body])
    assert app.extensions["runware_emulator"].wait_idle(10)
    poll = post(client, [{"taskType": "getResponse", "taskUUID": body["taskUUID"]}])
    assert poll.status_code == 200
    payload = poll.get_json()
    statuses = [i["status"] for i in payload["data"]]
    if placement == "errors":
        assert statuses == ["success", "success"]
        (error,) = payload["errors"]
        assert (error["status"], error["code"]) == ("error", "providerContentPolicyViolation")
    else:
        assert sorted(statuses) == ["error", "success", "success"]
        failed = next(i for i in payload["data"] if i["status"] == "error")
        assert failed["error"]["code"] == "providerContentPolicyViolation"
        assert "errors" not in payload
    ledger = client.get("/_emulator/ledger").get_json()
    assert ledger["totals"]["count"] == 2


def test_model_unavailable_switch(client: FlaskClient) -> None:
    client.patch("/_emulator/config", json={"model_unavailable": True})
    response = post(client, [task()])
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == "unknownModel"


def test_burst_refuses_whole_submits_with_retry_after(client: FlaskClient) -> None:
    client.patch("/_emulator/config", json={"burst": 2, "burst_status": 429, "retry_after_s": 3})
    for _ in range(2):
        response = post(client, [task()])
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.get_json()["errors"][0]["code"] == "rateLimitExceeded"
    assert post(client, [task()]).status_code == 200
    assert client.get("/_emulator/stats").get_json()["submit_faults"] == 2


def test_image_upload_feeds_reference_images(client: FlaskClient) -> None:
    upload = {
        "taskType": "imageUpload",
        "taskUUID": str(uuid.uuid4()),
        "image": png_data_uri(900, 1600),
    }
    item = post(client, [upload]).get_json()["data"][0]
    assert item["taskType"] == "imageUpload"
    body = task(
        width=None,
        height=None,
        deliveryMethod="sync",
        outputType="base64Data",
        inputs={"referenceImages": [item["imageUUID"]]},
    )
    result = post(client, [body]).get_json()["data"][0]
    image = Image.open(io.BytesIO(base64.b64decode(result["imageBase64Data"])))
    assert image.size == (768, 1408)
    assert client.get(item["imageURL"].replace("http://localhost", "")).status_code == 200


def test_config_patch_is_all_or_nothing(client: FlaskClient) -> None:
    response = client.patch("/_emulator/config", json={"envelope": "flat", "put_order": "x"})
    assert response.status_code == 400
    assert client.get("/_emulator/config").get_json()["envelope"] == "wrapped"


def test_config_from_env() -> None:
    config = EmulatorConfig.from_env(
        {
            "EMULATOR_API_KEYS": "a,b",
            "EMULATOR_SEED": "5",
            "EMULATOR_DELIVERIES": "off",
            "EMULATOR_SUBMIT_ERROR_STATUSES": "429,503",
            "EMULATOR_LATENCY_MIN_MS": "none",
        }
    )
    assert (config.api_keys, config.seed, config.deliveries) == (["a", "b"], 5, False)
    assert config.submit_error_statuses == [429, 503]
    with pytest.raises(ConfigError):
        EmulatorConfig.from_env({"EMULATOR_ENVELOPE": "boxed"})


def test_dimension_table_matches_presets() -> None:
    assert DIMENSIONS["2K"] == tuple((w * 2, h * 2) for w, h in DIMENSIONS["1K"])


def test_fault_schedule_is_reproducible_for_a_seed(client: FlaskClient) -> None:
    client.patch("/_emulator/config", json={"submit_error_rate": 0.5, "seed": 99})

    def run() -> list[int]:
        return [post(client, [task()]).status_code for _ in range(12)]

    first = run()
    client.post("/_emulator/reset")
    assert run() == first
    assert 200 in first
    assert set(first) - {200} <= {429, 503, 504}
    assert set(first) - {200}


def test_fault_queue_endpoints(client: FlaskClient) -> None:
    bad = client.post("/_emulator/faults/queue", json={"kind": "explode"})
    assert bad.status_code == 400
    client.post("/_emulator/faults/queue", json={"kind": "drop_webhook", "count": 3})
    queue = client.get("/_emulator/faults/queue").get_json()["queue"]
    assert queue == [{"kind": "drop_webhook", "count": 3, "params": {}, "taskUUID": None}]
    assert client.delete("/_emulator/faults/queue").get_json() == {"queue": []}


def test_controls_list_tasks_and_report_idle(app: Flask, client: FlaskClient) -> None:
    body = task(numberResults=2)
    post(client, [body])
    assert app.extensions["runware_emulator"].wait_idle(10)
    assert client.get("/_emulator/idle").get_json() == {"idle": True, "pending": 0}
    (summary,) = client.get("/_emulator/tasks").get_json()["tasks"]
    assert (summary["taskUUID"], summary["statuses"]) == (body["taskUUID"], ["success", "success"])
    detail = client.get(f"/_emulator/tasks/{body['taskUUID']}").get_json()
    assert [s["webhookOutcome"] for s in detail["slots"]] == ["none", "none"]
    assert client.get(f"/_emulator/tasks/{uuid.uuid4()}").status_code == 404


def test_controls_refuse_remote_clients(client: FlaskClient) -> None:
    remote = client.get("/_emulator/config", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 403


def test_hosted_image_needs_its_extension(client: FlaskClient) -> None:
    item = post(client, [task(deliveryMethod="sync")]).get_json()["data"][0]
    path = item["imageURL"].replace("http://localhost", "")
    assert client.get(path).status_code == 200
    assert client.get(path.replace(".jpg", ".png")).status_code == 404
