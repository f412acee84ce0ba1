"""The jobs API's OpenAPI document: generated from the schemas the views use, valid, complete,
and describing the job view the pipeline really builds."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from pipeline.documents import ResultURL, job_view, manifest
from pipeline.models import Job, JobState, Slot, SlotState
from pipeline.storage import MemoryObjectStorage
from tests.unit.conftest import FakeService, make_client

pytestmark = pytest.mark.unit

JOB_ID = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    answer = make_client(FakeService()).get("/v1/openapi.json")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json  # type: ignore[assignment]
    return body


def validator(document: dict[str, Any], name: str) -> OAS31Validator:
    """A JSON Schema validator of one component, references resolved within the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return OAS31Validator(schema, format_checker=OAS31Validator.FORMAT_CHECKER)


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_route_of_the_api_blueprint_is_documented_and_nothing_else() -> None:
    client = make_client(FakeService())
    document: dict[str, Any] = client.get("/v1/openapi.json").json  # type: ignore[assignment]
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint.startswith("api.")
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routes == documented
    assert ("/v1/jobs/{job_id}/images/{slot}", "get") in routes


def test_each_operation_answers_errors_in_the_one_shape_and_needs_the_api_key(
    document: dict[str, Any],
) -> None:
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["security"] == [{"apiKey": []}]
    for item in document["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "default" not in responses
            assert "401" in responses and "429" in responses
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == ERROR_REF
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "status", "message", "errors"}


def test_the_job_request_is_documented_by_the_schema_that_loads_it(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/v1/jobs"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobRequest"}
    request = document["components"]["schemas"]["JobRequest"]
    # The fields the hand-written document used to miss are there, unknown ones refused.
    for name in ("idempotencyKey", "callbackURL", "metadata", "deadlineSeconds", "fallbackModel"):
        assert name in request["properties"]
    assert request["additionalProperties"] is False
    assert request["properties"]["numberResults"]["maximum"] == 20
    header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header"
    assert set(operation["responses"]) >= {"200", "202", "409", "413", "415", "422"}
    assert operation["responses"]["200"]["headers"]["Idempotent-Replayed"]["required"] is True


def image_slot(number: int, **fields: Any) -> Slot:
    stored: dict[str, Any] = {
        "task_uuid": "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10",
        "image_uuid": "i-1",
        "seed": 42,
        "cost": 0.07,
        "final_key": f"jobs/{JOB_ID}/{number:02d}.jpg",
        "width": 1024,
        "height": 1024,
        "size": 2048,
        "etag": '"abc"',
        "format": "JPG",
        "requested_width": 1024,
        "requested_height": 1024,
        "requested_format": "JPG",
        "size_mismatch": False,
        "format_mismatch": False,
        "model": "xai:grok-imagine@image-pro",
    }
    return Slot(job_id=JOB_ID, slot=number, state=SlotState.STORED, **(stored | fields))


def ended_job() -> Job:
    """A job that ended with one stored image, one failed and one of another size."""
    return Job(
        id=JOB_ID,
        tenant="acme",
        state=JobState.PARTIALLY_SUCCEEDED,
        model="xai:grok-imagine@image-pro",
        params={"positivePrompt": "a lighthouse", "numberResults": 3},
        slot_count=3,
        output_format="JPG",
        created_at=1_700_000_000.0,
        updated_at=1_700_000_060.5,
        deadline_at=1_700_000_900.0,
        ended_at=1_700_000_060.5,
        idempotency_key="order-17",
        callback_url="https://hooks.example.com/done",
        metadata={"team": "maps"},
        manifest_key=f"jobs/{JOB_ID}/manifest.json",
        slots=[
            image_slot(0),
            Slot(
                job_id=JOB_ID,
                slot=1,
                state=SlotState.FAILED,
                attempt=2,
                error_code="providerContentPolicyViolation",
                error_message="refused",
            ),
            image_slot(2, requested_width=None, requested_height=None, size_mismatch=True),
        ],
    )


def queued_job() -> Job:
    return Job(
        id=JOB_ID,
        tenant="acme",
        state=JobState.QUEUED,
        model="xai:grok-imagine@image-pro",
        params={},
        slot_count=1,
        output_format="PNG",
        created_at=1_700_000_000.0,
        updated_at=1_700_000_000.0,
        deadline_at=1_700_000_900.0,
        slots=[Slot(job_id=JOB_ID, slot=0, state=SlotState.PENDING)],
    )


def presigner(storage: MemoryObjectStorage) -> Any:
    return lambda key: ResultURL(storage.presign_get(key, 900), 1_700_000_960.0)


def test_the_documented_job_view_validates_the_views_the_pipeline_builds(
    document: dict[str, Any],
) -> None:
    storage = MemoryObjectStorage()
    attempt = {
        "at": "2023-11-14T22:14:20Z",
        "webhookId": f"job-{JOB_ID}-ended-1700000060000",
        "outcome": "retrying",
        "status": 503,
        "error": None,
        "durationMs": 12.5,
        "nextAttemptAt": "2023-11-14T22:14:30Z",
    }
    # The API's view: the pipeline's job view and the callback attempts JobService adds.
    views = [
        {**job_view(ended_job(), presigner(storage)), "callbacks": [attempt]},
        {**job_view(ended_job()), "callbacks": []},  # result URLs turned off
        {**job_view(queued_job(), presigner(storage)), "callbacks": []},
    ]
    job = validator(document, "JobView")
    for view in views:
        job.validate(view)
    validator(document, "JobPage").validate({"jobs": views, "nextCursor": "1700000000.0"})
    # The check has teeth: a field the document does not know is refused.
    assert not job.is_valid({**views[0], "surprise": 1})


def test_stored_images_and_the_manifest_carry_urls_and_other_slots_none() -> None:
    storage = MemoryObjectStorage()
    view = job_view(ended_job(), presigner(storage))
    stored, failed, _ = view["slots"]
    assert stored["url"] == storage.presign_get(f"jobs/{JOB_ID}/00.jpg", 900)
    assert stored["urlExpiresAt"] == "2023-11-14T22:29:20Z"
    assert (failed["url"], failed["urlExpiresAt"]) == (None, None)
    assert view["manifestURL"] == storage.presign_get(f"jobs/{JOB_ID}/manifest.json", 900)
    assert view["manifestURLExpiresAt"] == "2023-11-14T22:29:20Z"
    # Without a presigner (RESULT_URL_SECONDS=0) every URL field is there, and null.
    off = job_view(ended_job())
    assert off["manifestURL"] is None and off["manifestURLExpiresAt"] is None
    assert all(slot["url"] is None and slot["urlExpiresAt"] is None for slot in off["slots"])
    # A queued job has no manifest yet.
    assert job_view(queued_job(), presigner(storage))["manifestURL"] is None


def test_the_manifest_carries_no_url() -> None:
    document = manifest(ended_job(), JobState.PARTIALLY_SUCCEEDED, 1, 1_700_000_060.5)
    assert "url" not in str(document).lower().replace("callbackurl", "")
    assert all("url" not in slot and "urlExpiresAt" not in slot for slot in document["slots"])


def test_an_invalid_query_parameter_is_a_documented_422_in_the_error_shape(
    document: dict[str, Any],
) -> None:
    client = make_client(FakeService())
    answer = client.get("/v1/jobs?state=bogus", headers={"Authorization": "Bearer k"})
    assert answer.status_code == 422
    body = answer.json or {}
    assert set(body) == {"code", "status", "message", "errors"}
    assert (body["code"], body["status"], list(body["errors"])) == (
        "validation_failed",
        422,
        ["state"],
    )
    unknown = client.get("/v1/jobs?stat=running", headers={"Authorization": "Bearer k"})
    assert unknown.status_code == 422 and unknown.json["errors"] == {  # type: ignore[index]
        "stat": ["Unknown field."]
    }
    # The key is checked before the parameters: without one, the same query is a 401.
    assert client.get("/v1/jobs?state=bogus").status_code == 401
    listing = document["paths"]["/v1/jobs"]["get"]
    assert listing["responses"]["422"]["content"]["application/json"]["schema"] == ERROR_REF
    state = next(p for p in listing["parameters"] if p["name"] == "state")
    assert "bogus" not in state["schema"]["enum"] and "running" in state["schema"]["enum"]


def test_the_docs_page_loads_the_document() -> None:
    client = make_client(FakeService())
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "/v1/openapi.json" in page.get_data(as_text=True)
    # Without the API role there is neither the document nor its page.
    public = make_client(FakeService(), roles=("webhooks",))
    assert public.get("/docs").status_code == 404
