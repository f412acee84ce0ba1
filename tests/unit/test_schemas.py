"""The job request we accept and the provider payloads we read, through the marshmallow schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from pipeline.schemas import PIPELINE_OWNED_FIELDS, load_job_request, parse_provider_body

pytestmark = pytest.mark.unit

MODEL = "xai:grok-imagine@image-pro"
EXAMPLES = json.loads(
    (
        Path(__file__).resolve().parents[2] / "infra" / "fixtures" / "model-page-examples.json"
    ).read_text()
)
TASK = "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10"
OTHER = "1b2c3d4e-5f60-4718-9a0b-1c2d3e4f5a6b"


def minimal(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"positivePrompt": "a lighthouse at dusk", "width": 1024, "height": 1024}
    body.update(overrides)
    return body


def refusal(body: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        load_job_request(body, MODEL)
    messages = caught.value.messages
    assert isinstance(messages, dict)
    return messages


# --- job requests -----------------------------------------------------------------------------


def test_the_fixture_holds_three_examples() -> None:
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["request"]["taskUUID"][:8])
def test_model_page_requests_load_as_is(example: dict[str, Any]) -> None:
    request = example["request"]
    loaded = load_job_request(request, MODEL)
    assert loaded["taskUUID"] == request["taskUUID"]
    assert loaded["model"] == request["model"]
    assert loaded["positivePrompt"] == request["positivePrompt"]
    assert (loaded["width"], loaded["height"]) == (request["width"], request["height"])
    assert loaded["numberResults"] == 1
    assert loaded["outputFormat"] == "JPG"


def test_defaults_fill_model_and_format() -> None:
    loaded = load_job_request(minimal(), MODEL)
    assert loaded["model"] == MODEL
    assert loaded["outputFormat"] == "JPG"
    assert "taskUUID" not in loaded


@pytest.mark.parametrize("name", PIPELINE_OWNED_FIELDS)
def test_pipeline_owned_fields_are_refused_by_name(name: str) -> None:
    messages = refusal(minimal(**{name: "https://example.com/x"}))
    assert list(messages) == [name]
    assert "set by the pipeline" in messages[name][0]


def test_owned_fields_are_reported_beside_other_errors() -> None:
    messages = refusal(minimal(ttl=3600, width=1000))
    assert "ttl" in messages
    assert "width" in messages


def test_the_six_owned_fields() -> None:
    assert set(PIPELINE_OWNED_FIELDS) == {
        "deliveryMethod",
        "webhookURL",
        "uploadEndpoint",
        "outputType",
        "ttl",
        "includeCost",
    }


@pytest.mark.parametrize("name", ["negativePrompt", "steps", "CFGScale", "seedImage", "lora"])
def test_unknown_fields_are_refused(name: str) -> None:
    messages = refusal(minimal(**{name: 1}))
    assert name in messages


@pytest.mark.parametrize("task_type", ["imageUpload", "getResponse", "videoInference", ""])
def test_other_task_types_are_refused(task_type: str) -> None:
    messages = refusal(minimal(taskType=task_type))
    assert messages["taskType"] == ["must be imageInference"]


def test_an_unknown_model_is_refused() -> None:
    messages = refusal(minimal(model="runware:101@1"))
    assert "runware:101@1" in messages["model"][0]
    assert MODEL in messages["model"][0]


def test_catalog_errors_surface_by_field() -> None:
    messages = refusal(minimal(width=1000, numberResults=21, outputQuality=100))
    assert {"width", "numberResults", "outputQuality"} <= set(messages)


def test_a_caller_task_uuid_must_be_a_uuid() -> None:
    assert "taskUUID" in refusal(minimal(taskUUID="not-a-uuid"))


def test_a_missing_prompt_is_refused() -> None:
    body = minimal()
    del body["positivePrompt"]
    assert "positivePrompt" in refusal(body)


def test_metadata_within_the_rules_is_kept() -> None:
    metadata = {f"key-{i}": f"value {i}" for i in range(10)}
    assert load_job_request(minimal(metadata=metadata), MODEL)["metadata"] == metadata


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(11)},
        {"clé": "value"},
        {"key": "valeur ünicode"},
        {"key": "x" * 257},
        {"key\n": "value"},
        {"": "value"},
        {"key": "line\nbreak"},
        {"key": 7},
    ],
    ids=[
        "11-pairs",
        "non-ascii-key",
        "non-ascii-value",
        "long-value",
        "newline-key",
        "empty-key",
        "control-char-value",
        "non-string-value",
    ],
)
def test_metadata_rules(metadata: dict[str, Any]) -> None:
    assert "metadata" in refusal(minimal(metadata=metadata))


@pytest.mark.parametrize("body", [[minimal()], "a lighthouse", 7, None])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    messages = refusal(body)
    assert messages == {"_schema": ["the request body must be a JSON object"]}


@pytest.mark.parametrize(("given", "loaded"), [("png", "PNG"), ("webp", "WEBP"), ("Jpg", "JPG")])
def test_output_format_is_case_insensitive(given: str, loaded: str) -> None:
    assert load_job_request(minimal(outputFormat=given), MODEL)["outputFormat"] == loaded


def test_the_caller_body_is_not_modified() -> None:
    body = minimal(outputFormat="png")
    load_job_request(body, MODEL)
    assert body["outputFormat"] == "png"


# --- provider payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["response"]["taskUUID"][:8])
def test_fixture_responses_read_as_flat_items(example: dict[str, Any]) -> None:
    response = example["response"]
    results, untied = parse_provider_body(response)
    assert untied == []
    assert len(results) == 1
    result = results[0]
    assert result.ok
    assert result.task_uuid == response["taskUUID"]
    assert result.image_uuid == response["imageUUID"]
    assert result.image_url == response["imageURL"]
    assert result.seed == response["seed"]
    assert result.cost == pytest.approx(response["cost"])


def test_a_wrapped_item_reads_like_a_flat_one() -> None:
    item = EXAMPLES[0]["response"]
    assert parse_provider_body({"data": [item]}) == parse_provider_body(item)


def test_an_errors_entry_tied_to_a_task() -> None:
    results, untied = parse_provider_body(
        {
            "errors": [
                {"code": "providerContentPolicyViolation", "message": "refused", "taskUUID": TASK}
            ]
        }
    )
    assert untied == []
    [result] = results
    assert (result.task_uuid, result.status, result.ok) == (TASK, "error", False)
    assert result.error_code == "providerContentPolicyViolation"
    assert result.error_message == "refused"


def test_an_errors_entry_without_a_task_is_returned_untied() -> None:
    results, untied = parse_provider_body(
        {
            "data": [],
            "errors": [{"code": "invalidApiKey", "message": "bad key", "parameter": "apiKey"}],
        }
    )
    assert results == []
    assert untied[0]["code"] == "invalidApiKey"
    assert untied[0]["parameter"] == "apiKey"


def test_an_item_with_a_nested_error() -> None:
    [result] = parse_provider_body(
        {
            "data": [
                {
                    "taskType": "imageInference",
                    "taskUUID": TASK,
                    "status": "error",
                    "error": {"code": "timeoutProvider", "message": "took too long"},
                }
            ]
        }
    )[0]
    assert result.status == "error"
    assert (result.error_code, result.error_message) == ("timeoutProvider", "took too long")


def test_an_error_status_without_details_still_fails() -> None:
    [result] = parse_provider_body({"taskUUID": TASK, "status": "error"})[0]
    assert result.status == "error"
    assert result.error_code == "providerError"


@pytest.mark.parametrize("status", ["processing", "pending", "queued", "PROCESSING"])
def test_a_processing_item(status: str) -> None:
    [result] = parse_provider_body(
        {
            "data": [
                {"taskType": "imageInference", "taskUUID": TASK, "status": status, "progress": 40}
            ]
        }
    )[0]
    assert (result.task_uuid, result.status, result.ok) == (TASK, "processing", False)


def test_an_acknowledgement_placeholder_is_processing() -> None:
    [result] = parse_provider_body({"data": [{"taskType": "imageInference", "taskUUID": TASK}]})[0]
    assert result.status == "processing"


def test_an_authentication_item_is_ignored() -> None:
    item = EXAMPLES[0]["response"]
    results, untied = parse_provider_body(
        {"data": [{"taskType": "authentication", "connectionSessionUUID": OTHER}, item]}
    )
    assert [r.task_uuid for r in results] == [item["taskUUID"]]
    assert untied == []


def test_unknown_provider_fields_are_ignored() -> None:
    item = {
        **EXAMPLES[0]["response"],
        "status": "success",
        "NSFWContent": False,
        "documentation": "https://runware.ai/docs",
        "newField": {"nested": [1, 2]},
    }
    [result] = parse_provider_body({"data": [item], "extra": True})[0]
    assert result.ok
    assert result.nsfw is False
    assert not hasattr(result, "newField")


def test_mixed_items_keep_their_order_and_kind() -> None:
    success = {**EXAMPLES[0]["response"], "taskUUID": TASK, "status": "success"}
    results, _ = parse_provider_body(
        {
            "data": [success, {"taskUUID": TASK, "status": "processing"}],
            "errors": [{"code": "x", "message": "y", "taskUUID": TASK}],
        }
    )
    assert [r.status for r in results] == ["success", "processing", "error"]


@pytest.mark.parametrize(
    "body",
    [
        "garbage",
        42,
        None,
        {"data": "nope"},
        {"data": [{"seed": 1}]},
        {"data": [{"taskUUID": TASK}] * 65},
    ],
)
def test_garbage_is_refused(body: Any) -> None:
    with pytest.raises(ValidationError):
        parse_provider_body(body)


def test_outgoing_task_schema_accepts_what_the_pipeline_sends() -> None:
    from pipeline.schemas import check_outgoing_task

    task = {
        "taskType": "imageInference",
        "taskUUID": "1607528b-b740-4975-8cc1-6dc6b2d18f60",
        "model": "xai:grok-imagine@image-pro",
        "positivePrompt": "x",
        "resolution": "1K",
        "outputFormat": "JPG",
        "outputType": "URL",
        "numberResults": 1,
        "deliveryMethod": "async",
        "includeCost": True,
        "ttl": 1500,
        "webhookURL": "http://127.0.0.1:8000/webhooks/runware/1607528b?token=abc",
        "uploadEndpoint": "http://127.0.0.1:9000/bucket/staging/j/t?X-Amz-Signature=1",
    }
    assert check_outgoing_task(task) is task


@pytest.mark.parametrize(
    "change",
    [
        {"numberResults": 2},
        {"deliveryMethod": "sync"},
        {"ttl": 59},
        {"taskUUID": "nope"},
        {"webhookURL": "not a url"},
        {"surprise": 1},
    ],
)
def test_outgoing_task_schema_refuses_a_malformed_task(change: dict[str, Any]) -> None:
    from pipeline.schemas import check_outgoing_task

    task = {
        "taskType": "imageInference",
        "taskUUID": "1607528b-b740-4975-8cc1-6dc6b2d18f60",
        "model": "xai:grok-imagine@image-pro",
        "positivePrompt": "x",
        "resolution": "1K",
        "numberResults": 1,
        "deliveryMethod": "async",
        "ttl": 600,
        "webhookURL": "http://127.0.0.1:8000/w",
        "uploadEndpoint": "http://127.0.0.1:9000/u",
    }
    with pytest.raises(ValueError, match="malformed Runware task"):
        check_outgoing_task({**task, **change})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", "many"),
        ("seed", -1),
        ("seed", 2**70),
        ("seed", True),
        ("cost", "free"),
        ("cost", float("inf")),
        ("cost", -1),
        ("NSFWContent", "maybe"),
        ("imageURL", "http://a\r\nb"),
    ],
)
def test_an_odd_provider_value_is_dropped_not_the_paid_image(field: str, value: Any) -> None:
    item = {"taskUUID": TASK, "imageUUID": "img-1", "status": "success", field: value}
    (result,), _ = parse_provider_body({"data": [item]})
    assert result.ok and result.image_uuid == "img-1"
    assert {
        "seed": result.seed,
        "cost": result.cost,
        "NSFWContent": result.nsfw,
        "imageURL": result.image_url,
    }[field] is None


def test_provider_text_is_made_safe_before_it_is_stored() -> None:
    (ok,), _ = parse_provider_body({"data": [{"taskUUID": TASK, "imageUUID": "a\r\nX-Evil: 1é"}]})
    assert ok.image_uuid == "a__X-Evil__1_"
    (failed,), _ = parse_provider_body(
        {
            "errors": [
                {"taskUUID": TASK, "code": "bad code\n", "message": "line\r\nnext\x00" + "m" * 2000}
            ]
        }
    )
    assert failed.error_code == "providerError"
    assert failed.error_message is not None and len(failed.error_message) == 1000
    assert failed.error_message.startswith("line  next ")


# --- the model, chosen per job ----------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    ["xai:grok-imagine@image-pro", "xai:grok-imagine@image", "xai:grok-imagine@image-quality"],
)
def test_a_job_may_name_any_catalog_model(model: str) -> None:
    assert load_job_request(minimal(model=model), MODEL)["model"] == model


def test_a_job_follows_its_models_own_rules() -> None:
    body = minimal(model="xai:grok-imagine@image", resolution="2K", width=None, height=None)
    body = {key: value for key, value in body.items() if value is not None}
    assert "resolution" in refusal(body)
    assert load_job_request({**body, "model": "xai:grok-imagine@image-quality"}, MODEL)


def test_a_model_the_deployment_does_not_allow_is_refused_naming_model() -> None:
    allowed = ["xai:grok-imagine@image-pro"]
    with pytest.raises(ValidationError) as caught:
        load_job_request(minimal(model="xai:grok-imagine@image"), MODEL, allowed)
    assert isinstance(caught.value.messages, dict)
    assert "not allowed" in caught.value.messages["model"][0]
    assert load_job_request(minimal(), MODEL, allowed)["model"] == MODEL


def test_a_fallback_model_is_kept_when_it_accepts_the_request() -> None:
    loaded = load_job_request(minimal(fallbackModel="xai:grok-imagine@image"), MODEL)
    assert loaded["fallbackModel"] == "xai:grok-imagine@image"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (minimal(fallbackModel=MODEL), "must differ"),
        (minimal(fallbackModel="xai:grok-imagine@image-ultra"), "unknown model"),
        (
            {"positivePrompt": "p", "resolution": "2K", "fallbackModel": "xai:grok-imagine@image"},
            "would not accept",
        ),
        (
            minimal(width=2048, height=2048, fallbackModel="xai:grok-imagine@image"),
            "would not accept",
        ),
    ],
)
def test_a_fallback_model_is_refused_naming_fallbackmodel(body: dict[str, Any], words: str) -> None:
    messages = refusal(body)
    assert words in messages["fallbackModel"][0]
    assert "model" not in messages


def test_a_fallback_model_the_deployment_does_not_allow_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        load_job_request(minimal(fallbackModel="xai:grok-imagine@image"), MODEL, [MODEL])
    assert isinstance(caught.value.messages, dict)
    assert "not allowed" in caught.value.messages["fallbackModel"][0]
