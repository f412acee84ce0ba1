"""docs/manifest.schema.json holds every manifest `manifest()` writes, and nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from pipeline.documents import manifest
from pipeline.models import JOB_TERMINAL, SLOT_TERMINAL, Job, JobState, Slot, SlotState

pytestmark = pytest.mark.unit

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"
JOB = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
MODEL = "xai:grok-imagine@image-pro"
FALLBACK = "runware:400@1"
CREATED = 1_700_000_000.25


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def validator() -> Draft202012Validator:
    return Draft202012Validator(schema(), format_checker=FormatChecker())


def make_job(slots: list[Slot], state: JobState, **overrides: Any) -> Job:
    values: dict[str, Any] = {
        "id": JOB,
        "tenant": "acme",
        "state": state,
        "model": MODEL,
        "params": {
            "model": MODEL,
            "positivePrompt": "a lighthouse at dawn",
            "width": 1280,
            "height": 896,
            "numberResults": len(slots),
            "outputFormat": "PNG",
        },
        "slot_count": len(slots),
        "output_format": "PNG",
        "created_at": CREATED,
        "updated_at": CREATED + 30,
        "deadline_at": CREATED + 900,
        "metadata": {"order": "42"},
        "slots": slots,
    }
    values.update(overrides)
    return Job(**values)


def stored(n: int, **overrides: Any) -> Slot:
    values: dict[str, Any] = {
        "job_id": JOB,
        "slot": n,
        "state": SlotState.STORED,
        "model": MODEL,
        "task_uuid": f"9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a{n:02d}",
        "image_uuid": f"fd43ce5d-bc6d-487f-91d0-5d417cfcdb{n:02d}",
        "seed": 109682711 + n,
        "cost": 0.07,
        "final_key": f"jobs/{JOB}/{n:02d}.png",
        "width": 1280,
        "height": 896,
        "format": "PNG",
        "requested_width": 1280,
        "requested_height": 896,
        "requested_format": "PNG",
        "size_mismatch": False,
        "format_mismatch": False,
        "size": 48213,
        "etag": '"0cc175b9c0f1b6a831c399e269772661"',
    }
    values.update(overrides)
    return Slot(**values)


def ended(n: int, state: SlotState, code: str, **overrides: Any) -> Slot:
    values: dict[str, Any] = {
        "job_id": JOB,
        "slot": n,
        "state": state,
        "model": MODEL,
        "task_uuid": f"9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8b{n:02d}",
        "error_code": code,
        "error_message": f"{code} happened",
    }
    values.update(overrides)
    return Slot(**values)


CASES: dict[str, tuple[Job, JobState, int]] = {
    "succeeded": (
        make_job([stored(0), stored(1, attempt=2, error_code="timeoutProvider")], "succeeded"),
        JobState.SUCCEEDED,
        1,
    ),
    "partially succeeded, one size and format mismatch": (
        make_job(
            [
                stored(
                    0,
                    width=1024,
                    height=1024,
                    format="JPG",
                    final_key=f"jobs/{JOB}/00.jpg",
                    size_mismatch=True,
                    format_mismatch=True,
                ),
                ended(1, SlotState.FAILED, "providerContentPolicyViolation"),
            ],
            "partially_succeeded",
        ),
        JobState.PARTIALLY_SUCCEEDED,
        1,
    ),
    "failed, dead and never sent": (
        make_job(
            [
                ended(0, SlotState.DEAD, "timeoutProvider", attempt=3),
                ended(1, SlotState.FAILED, "rejected", task_uuid=None, model=None),
                ended(2, SlotState.FAILED, "image_rejected", error_message=None),
            ],
            "failed",
            fallback_model=FALLBACK,
            reason="images sent on the fallback model",
        ),
        JobState.FAILED,
        1,
    ),
    "refused request (no slots)": (
        make_job(
            [],
            "failed",
            params={},
            metadata={},
            reason='validation_failed: {"width": ["required"]}',
        ),
        JobState.FAILED,
        1,
    ),
    "cancelled, a late result discarded": (
        make_job(
            [
                ended(0, SlotState.FAILED, "cancelled"),
                ended(1, SlotState.DISCARDED, "cancelled", cost=0.07, seed=3),
                ended(2, SlotState.DISCARDED, "", error_code=None, cost=0.07),
            ],
            "cancelled",
            client_task_uuid="1607528b-b740-4975-8cc1-6dc6b2d18f60",
            ended_at=CREATED + 5,
        ),
        JobState.CANCELLED,
        2,
    ),
    "timed out": (
        make_job(
            [ended(0, SlotState.FAILED, "deadline"), ended(1, SlotState.FAILED, "deadline")],
            "timed_out",
        ),
        JobState.TIMED_OUT,
        1,
    ),
    "an edit that allowed several sizes, on the fallback model": (
        make_job(
            [stored(0, model=FALLBACK, requested_width=None, requested_height=None)],
            "succeeded",
            fallback_model=FALLBACK,
        ),
        JobState.SUCCEEDED,
        3,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_kind_of_ended_job_has_a_manifest_the_schema_accepts(case: str) -> None:
    job, state, version = CASES[case]

    document = manifest(job, state, version, CREATED + 60)
    # As written to S3: through JSON, where enums are plain strings.
    written = json.loads(json.dumps(document, indent=2))

    errors = [error.message for error in validator().iter_errors(written)]
    assert errors == []


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(schema())


def test_every_field_the_manifest_writes_is_required_and_named() -> None:
    document = manifest(CASES["succeeded"][0], JobState.SUCCEEDED, 1, CREATED + 60)
    top = schema()
    slot = top["$defs"]["slot"]

    assert set(top["required"]) == set(top["properties"]) == set(document)
    assert set(slot["required"]) == set(slot["properties"]) == set(document["slots"][0])


def test_the_state_enums_are_the_terminal_states() -> None:
    top = schema()

    assert set(top["properties"]["state"]["enum"]) == {str(state) for state in JOB_TERMINAL}
    assert set(top["$defs"]["slot"]["properties"]["state"]["enum"]) == {
        str(state) for state in SLOT_TERMINAL
    }


def good() -> dict[str, Any]:
    job, state, version = CASES["partially succeeded, one size and format mismatch"]
    document: dict[str, Any] = json.loads(json.dumps(manifest(job, state, version, CREATED)))
    return document


def spoil_extra_field(document: dict[str, Any]) -> None:
    document["url"] = "https://example.com/x"


def spoil_extra_slot_field(document: dict[str, Any]) -> None:
    document["slots"][0]["url"] = "https://example.com/x"


def spoil_missing_field(document: dict[str, Any]) -> None:
    del document["endedAt"]


def spoil_open_job_state(document: dict[str, Any]) -> None:
    document["state"] = "running"


def spoil_open_slot_state(document: dict[str, Any]) -> None:
    document["slots"][1]["state"] = "received"


def spoil_stored_without_key(document: dict[str, Any]) -> None:
    document["slots"][0]["finalKey"] = None


def spoil_key_on_a_failed_slot(document: dict[str, Any]) -> None:
    document["slots"][1]["finalKey"] = f"jobs/{JOB}/01.png"


def spoil_version_zero(document: dict[str, Any]) -> None:
    document["manifestVersion"] = 0


def spoil_local_time(document: dict[str, Any]) -> None:
    document["createdAt"] = "2023-11-14T23:13:20+01:00"


def spoil_unknown_format(document: dict[str, Any]) -> None:
    document["slots"][0]["format"] = "GIF"


@pytest.mark.parametrize(
    "spoil",
    [
        spoil_extra_field,
        spoil_extra_slot_field,
        spoil_missing_field,
        spoil_open_job_state,
        spoil_open_slot_state,
        spoil_stored_without_key,
        spoil_key_on_a_failed_slot,
        spoil_version_zero,
        spoil_local_time,
        spoil_unknown_format,
    ],
)
def test_the_schema_refuses_a_manifest_the_pipeline_would_not_write(spoil: Any) -> None:
    document = copy.deepcopy(good())
    assert validator().is_valid(document)

    spoil(document)

    assert not validator().is_valid(document)
