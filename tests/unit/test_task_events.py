"""What Celery's events (and so Flower) show of the pipeline's tasks: readable calls, no
request body, a failed job as a failed task, the log scope a task runs in."""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.dispatch import CeleryDispatcher, describe_call, send_create_job
from pipeline.failures import JobFailed, failure_of
from pipeline.logs import log_context, log_scope
from pipeline.models import Job, JobState, Slot, SlotState
from workers.base import close_log_scope, open_log_scope, withhold_arguments

pytestmark = pytest.mark.unit

JOB = "5b0f1c52-5c38-4bb4-9d2b-0b0e1f6a3c11"
REQUEST = {"positivePrompt": "a very private prompt", "callbackURL": "https://x/?token=t"}


class RecordingApp:
    """Stands in for the Celery app: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def test_calls_read_as_named_arguments() -> None:
    assert describe_call("imagine.finalize_slot", [JOB, 3], {}) == (f"job_id='{JOB}', slot=3", "{}")
    assert describe_call("imagine.reconcile", [], {}) == ("", "{}")
    assert describe_call("someone.elses_task", [REQUEST], {}) is None


def test_a_job_request_is_never_shown_wherever_it_is_passed() -> None:
    by_position = describe_call("imagine.create_job", [REQUEST, "acme", "key-1"], {})
    by_name = describe_call("imagine.create_job", [], {"request": REQUEST, "tenant": "acme"})
    extra = describe_call("imagine.submit_job", [JOB, REQUEST], {"surprise": REQUEST})
    for shown in (by_position, by_name, extra):
        assert shown is not None
        assert "private" not in "".join(shown) and "token" not in "".join(shown)
    assert by_position == ("request=<withheld>, tenant='acme', idempotency_key='key-1'", "{}")
    assert extra == (f"job_id='{JOB}', surprise=<withheld>, <1 more withheld>", "{}")


def test_nudges_carry_readable_arguments_and_the_senders_scope() -> None:
    app = RecordingApp()
    with log_scope(request_id="req-12345678", tenant="acme", job_id=JOB):
        CeleryDispatcher(app).finalize_slot(JOB, 1, countdown=2)
        send_create_job(app, REQUEST, "acme")
    (name, options), (by_name, create) = app.sent
    assert name == "imagine.finalize_slot" and options["args"] == [JOB, 1]
    assert options["argsrepr"] == f"job_id='{JOB}', slot=1" and options["countdown"] == 2
    assert options["headers"] == {"imagine_request_id": "req-12345678", "imagine_tenant": "acme"}
    assert by_name == "imagine.create_job" and create["args"][0] == REQUEST
    assert "private" not in create["argsrepr"]


def test_a_worker_withholds_a_request_sent_without_the_helper() -> None:
    request = SimpleNamespace(
        name="imagine.create_job",
        args=[REQUEST, "acme"],
        kwargs={"idempotency_key": "k"},
        _argsrepr=repr([REQUEST, "acme"]),
        _kwargsrepr="{'idempotency_key': 'k'}",
        request_dict={"argsrepr": repr([REQUEST, "acme"])},
    )
    withhold_arguments(request)
    assert request._argsrepr == "request=<withheld>, tenant='acme', idempotency_key='k'"
    assert request.request_dict["argsrepr"] == request._argsrepr


def _job(state: JobState, *slots: tuple[SlotState, str | None]) -> Job:
    return Job(
        id=JOB,
        tenant="acme",
        state=state,
        model="m",
        params={"positivePrompt": "a very private prompt"},
        slot_count=len(slots),
        output_format="JPG",
        created_at=0.0,
        updated_at=0.0,
        deadline_at=1.0,
        slots=[
            Slot(job_id=JOB, slot=n, state=slot_state, error_code=code)
            for n, (slot_state, code) in enumerate(slots)
        ],
    )


def test_a_job_that_ended_without_its_images_is_a_failure_naming_each_code() -> None:
    job = _job(
        JobState.PARTIALLY_SUCCEEDED,
        (SlotState.STORED, None),
        (SlotState.DEAD, "providerContentPolicyViolation"),
        (SlotState.FAILED, "a code with the prompt in it"),
    )
    failure = failure_of(job)
    assert isinstance(failure, JobFailed)
    assert str(failure) == (
        f"job {JOB} ended partially_succeeded: slot 1 dead (providerContentPolicyViolation); "
        "slot 2 failed (-)"
    )
    # The prefork pool hands a task's exception to the worker process pickled.
    assert str(pickle.loads(pickle.dumps(failure))) == str(failure)  # noqa: S301 - our own bytes
    assert failure_of(_job(JobState.SUCCEEDED, (SlotState.STORED, None))) is None
    assert failure_of(_job(JobState.CANCELLED, (SlotState.FAILED, "cancelled"))) is None
    refused = _job(JobState.FAILED)
    refused.reason = 'validation_failed: {"width": ["private detail"]}'
    assert str(failure_of(refused)) == f"job {JOB} ended failed: validation_failed"


def test_a_task_runs_in_the_scope_of_its_job_and_the_call_that_sent_it() -> None:
    task = SimpleNamespace(
        name="imagine.finalize_slot",
        request=SimpleNamespace(headers={"imagine_request_id": "req-12345678"}),
    )
    open_log_scope("celery-1", task, args=[JOB, 2])
    assert log_context() == {
        "request_id": "req-12345678",
        "job_id": JOB,
        "slot": 2,
        "task_id": "celery-1",
        "task": "imagine.finalize_slot",
    }
    close_log_scope("celery-1")
    assert log_context() == {}
