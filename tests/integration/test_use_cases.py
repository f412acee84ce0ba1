"""Each use case held directly: real Redis, an in-memory bucket, Runware on MockTransport."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from pipeline.errors import ProviderError
from pipeline.signing import webhook_token
from tests.integration.conftest import (
    USE_CASE_IMAGE_HOST,
    USE_CASE_PREFIX,
    USE_CASE_WEBHOOK_SECRET,
    UseCases,
    error_item,
    image_item,
    jpeg_bytes,
)

pytestmark = pytest.mark.integration

PROMPT = "a lighthouse at dawn"
GRACE = 60  # RECONCILE_GRACE_SECONDS of the harness


def slot_states(uc: UseCases, job_id: str) -> list[str]:
    job = uc.store.get_job(job_id)
    assert job is not None
    return [str(slot.state) for slot in job.slots]


def job_state(uc: UseCases, job_id: str) -> str:
    job = uc.store.get_job(job_id)
    assert job is not None
    return str(job.state)


# ------------------------------------------------------------------ submit


def test_submit_persists_every_taskuuid_then_posts_every_slot_in_one_request(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=3, metadata={"team": "maps"})

    assert uc.service.submit_job(job_id) == "submitted"

    [post] = uc.runware.posts
    task_uuids = uc.task_uuids(job_id)
    assert [task["taskUUID"] for task in post] == task_uuids
    assert len(set(task_uuids)) == 3
    # Runware never saw a taskUUID the store did not hold already: nothing is paid for twice.
    assert uc.runware.stored_before_post == dict.fromkeys(task_uuids, True)
    for task in post:
        task_uuid = task["taskUUID"]
        assert task["taskType"] == "imageInference" and task["numberResults"] == 1
        assert (task["positivePrompt"], task["width"], task["height"]) == (PROMPT, 1024, 1024)
        assert task["deliveryMethod"] == "async" and task["includeCost"] is True
        webhook = urlsplit(task["webhookURL"])
        assert webhook.path == f"/webhooks/runware/{task_uuid}"
        assert parse_qs(webhook.query)["token"] == [
            webhook_token(USE_CASE_WEBHOOK_SECRET, task_uuid)
        ]
        assert (
            f"/{uc.storage.bucket}/{USE_CASE_PREFIX}staging/{job_id}/{task_uuid}"
            in task["uploadEndpoint"]
        )
    assert job_state(uc, job_id) == "running"
    assert slot_states(uc, job_id) == ["submitted"] * 3
    assert uc.leases_in_use() == 3


def test_a_submit_retried_after_an_outage_reuses_its_taskuuids(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=2)
    uc.runware.outage = [503]

    with pytest.raises(ProviderError) as raised:
        uc.service.submit_job(job_id)
    assert raised.value.kind == ProviderError.TRANSIENT
    minted = uc.task_uuids(job_id)
    assert slot_states(uc, job_id) == ["pending", "pending"]

    assert uc.service.submit_job(job_id) == "submitted"

    first, second = uc.runware.inference_posts()
    assert [task["taskUUID"] for task in first] == [task["taskUUID"] for task in second] == minted
    assert slot_states(uc, job_id) == ["submitted", "submitted"]
    assert uc.leases_in_use() == 2


def test_a_task_runware_refuses_at_submit_fails_its_slot_only(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=2)
    uc.runware.refusals = [
        None,
        {"code": "unknownParameter", "message": "bad field", "parameter": "x"},
    ]

    assert uc.service.submit_job(job_id) == "submitted"

    [post] = uc.runware.inference_posts()
    assert len(post) == 2
    assert slot_states(uc, job_id) == ["submitted", "failed"]
    refused = uc.store.get_slot(job_id, 1)
    assert refused is not None and refused.error_code == "unknownParameter"
    assert uc.leases_in_use() == 1
    assert job_state(uc, job_id) == "running"


@pytest.mark.parametrize("use_case_settings", [{"RUNWARE_MAX_IN_FLIGHT": "2"}], indirect=True)
def test_submit_within_the_in_flight_budget_and_the_rest_when_a_lease_comes_back(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=3)

    assert uc.service.submit_job(job_id) == "submitted"

    [first_post] = uc.runware.inference_posts()
    assert len(first_post) == 2
    assert slot_states(uc, job_id) == ["submitted", "submitted", "pending"]
    assert uc.leases_in_use() == 2
    nudged = len(uc.dispatcher.sent)

    done = first_post[0]["taskUUID"]
    uc.webhook(done, {"data": [image_item(done)]})

    assert uc.dispatcher.sent[nudged:] == [("submit", (job_id,))], "the waiting job is woken"
    assert uc.service.submit_job(job_id) == "submitted"
    _, second_post = uc.runware.inference_posts()
    assert [task["taskUUID"] for task in second_post] == [uc.task_uuids(job_id)[2]]
    assert slot_states(uc, job_id) == ["received", "submitted", "submitted"]
    assert uc.leases_in_use() == 2


# ------------------------------------------------------------------ record


def test_a_webhook_success_records_the_image_as_received(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    item = image_item(task_uuid, seed=1234, cost=0.07)

    assert uc.webhook(task_uuid, {"data": [item]}) == ["received"]

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and slot.state == "received"
    assert (slot.image_uuid, slot.image_url, slot.seed, slot.cost) == (
        item["imageUUID"],
        item["imageURL"],
        1234,
        0.07,
    )
    assert uc.leases_in_use() == 0
    # The same webhook again changes nothing.
    assert uc.webhook(task_uuid, {"data": [item]}) == ["duplicate"]
    assert job_state(uc, job_id) == "running"


def test_a_transient_item_error_earns_a_new_attempt_with_a_new_taskuuid(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [first] = uc.submitted()
    nudged = len(uc.dispatcher.sent)

    assert uc.webhook(first, {"errors": [error_item(first, "timeoutProvider")]}) == ["retrying"]

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None
    assert (slot.state, slot.attempt, slot.error_code) == ("pending", 2, "timeoutProvider")
    assert uc.dispatcher.sent[nudged:] == [("submit", (job_id,))]
    assert uc.leases_in_use() == 0
    assert uc.service.submit_job(job_id) == "submitted"
    [second] = uc.task_uuids(job_id)
    assert second != first
    assert list(uc.runware.submitted()) == [first, second]
    # A late success of the retired attempt is not this slot's image any more.
    assert uc.webhook(first, {"data": [image_item(first)]}) == ["stale"]
    assert uc.webhook(second, {"data": [image_item(second)]}) == ["received"]


def test_a_permanent_item_error_fails_the_slot_and_ends_the_job(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    body = {"errors": [error_item(task_uuid, "providerContentPolicyViolation", "refused")]}

    assert uc.webhook(task_uuid, body) == ["failed"]

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.error_code) == (
        "failed",
        "providerContentPolicyViolation",
    )
    assert job_state(uc, job_id) == "failed"
    assert uc.manifest(job_id)["slots"][0]["error"] == {
        "code": "providerContentPolicyViolation",
        "message": "refused",
    }
    assert list(uc.runware.submitted()) == [task_uuid], "a refused image is not tried again"


def test_a_slot_past_its_attempts_is_dead_and_dead_lettered(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create()
    outcomes = []
    for _ in range(uc.settings.slot_max_attempts):
        assert uc.service.submit_job(job_id) == "submitted"
        [task_uuid] = uc.task_uuids(job_id)
        outcomes += uc.webhook(task_uuid, {"errors": [error_item(task_uuid, "timeoutProvider")]})

    assert outcomes == ["retrying", "retrying", "dead"]
    assert len(uc.runware.submitted()) == 3
    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.attempt) == ("dead", 3)
    assert uc.dead_letters() == [(job_id, 0, "timeoutProvider")]
    assert job_state(uc, job_id) == "failed"
    assert uc.manifest(job_id)["slots"][0]["state"] == "dead"
    assert uc.leases_in_use() == 0
    assert uc.service.submit_job(job_id) == "done"
    assert len(uc.runware.submitted()) == 3, "a dead slot is not submitted again"


# ------------------------------------------------------------------ promote


def test_promote_turns_the_staged_jpeg_into_the_final_object_with_metadata(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted(metadata={"team": "maps"})
    image = jpeg_bytes()
    staging = uc.upload(task_uuid, image)
    item = image_item(task_uuid, seed=42)
    uc.webhook(task_uuid, {"data": [item]})

    assert uc.service.promote_slot(job_id, 0) == "stored"

    final = f"{USE_CASE_PREFIX}jobs/{job_id}/00.jpg"
    head = uc.storage.head(final)
    assert head is not None and head.content_type == "image/jpeg"
    assert uc.storage.read(final, max_bytes=len(image)) == image
    assert head.metadata == {
        "imagine-job-id": job_id,
        "imagine-slot": "0",
        "imagine-tenant": "acme",
        "imagine-model": "xai:grok-imagine@image-pro",
        "imagine-task-uuid": task_uuid,
        "imagine-image-uuid": item["imageUUID"],
        "imagine-seed": "42",
        "imagine-prompt-sha256": hashlib.sha256(PROMPT.encode()).hexdigest(),
        "imagine-width": "1024",
        "imagine-height": "1024",
        "user-team": "maps",
    }
    assert uc.storage.head(staging) is None, "the staging object is removed"
    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None
    assert (slot.state, slot.final_key, slot.etag, slot.size) == (
        "stored",
        final,
        head.etag,
        len(image),
    )
    assert job_state(uc, job_id) == "succeeded"
    assert uc.service.promote_slot(job_id, 0) == "noop"


def test_while_one_step_ends_the_job_another_writes_no_manifest(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    manifest = f"{USE_CASE_PREFIX}jobs/{job_id}/manifest.json"
    uc.upload(task_uuid, jpeg_bytes())
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})

    with uc.store.exclusive(f"finish:{job_id}", 30) as held:  # another step is ending it
        assert held
        assert uc.service.promote_slot(job_id, 0) == "stored"
        assert uc.storage.head(manifest) is None and job_state(uc, job_id) == "running"

    assert uc.service.finish_job(job_id)  # its retry, once the other step gave up
    assert uc.storage.head(manifest) is not None and job_state(uc, job_id) == "succeeded"
    assert not uc.service.finish_job(job_id)


def test_promote_without_an_upload_reports_it_missing_and_stores_nothing(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})

    assert uc.service.promote_slot(job_id, 0) == "missing"

    assert slot_states(uc, job_id) == ["received"]
    assert uc.storage.list_keys(f"{USE_CASE_PREFIX}jobs/{job_id}/") == []
    assert uc.runware.fetches == [], "without leave to fetch, imageURL is not fetched"


def test_promote_fetches_the_hosted_copy_when_the_upload_never_landed(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    item = image_item(task_uuid)
    hosted = jpeg_bytes()
    uc.runware.host(item["imageURL"], hosted)
    uc.webhook(task_uuid, {"data": [item]})

    assert uc.service.promote_slot(job_id, 0, allow_fetch=True) == "stored"

    [fetch] = uc.runware.fetches
    assert fetch.url.host == USE_CASE_IMAGE_HOST and fetch.url.path == f"/image/{task_uuid}.jpg"
    final = f"{USE_CASE_PREFIX}jobs/{job_id}/00.jpg"
    assert uc.storage.read(final, max_bytes=len(hosted)) == hosted
    head = uc.storage.head(final)
    assert head is not None and head.content_type == "image/jpeg"
    assert head.metadata["imagine-task-uuid"] == task_uuid
    assert job_state(uc, job_id) == "succeeded"


def test_promote_stores_and_flags_a_paid_image_of_another_size(use_cases: UseCases) -> None:
    uc = use_cases
    before = uc.store.mismatches().get("size", 0)
    job_id, [task_uuid] = uc.submitted()
    uc.upload(task_uuid, jpeg_bytes(512, 512))
    uc.webhook(task_uuid, {"data": [image_item(task_uuid, imageURL=None)]})

    assert uc.service.promote_slot(job_id, 0) == "stored"

    job = uc.store.get_job(job_id)
    assert job is not None and job.state == "succeeded"
    view = uc.service.job_view(job)["slots"][0]
    assert (view["width"], view["height"], view["format"]) == (512, 512, "JPG")
    assert view["requested"] == {"width": 1024, "height": 1024, "format": "JPG"}
    assert view["sizeMismatch"] is True and view["formatMismatch"] is False
    assert uc.store.mismatches().get("size", 0) == before + 1
    manifest = json.loads(uc.storage.read(f"{USE_CASE_PREFIX}jobs/{job_id}/manifest.json", 10**6))
    assert manifest["slots"][0]["requested"]["width"] == 1024
    assert manifest["slots"][0]["width"] == 512


def test_promote_stores_a_png_under_its_real_extension(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), (9, 9, 9)).save(buffer, "PNG")
    uc.upload(task_uuid, buffer.getvalue())
    uc.webhook(task_uuid, {"data": [image_item(task_uuid, imageURL=None)]})

    assert uc.service.promote_slot(job_id, 0) == "stored"

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and slot.final_key == f"{USE_CASE_PREFIX}jobs/{job_id}/00.png"
    assert (slot.format, slot.requested_format, slot.format_mismatch) == ("PNG", "JPG", True)
    assert slot.size_mismatch is False


@pytest.mark.parametrize("use_case_settings", [{"SIZE_MISMATCH_FAILS": "true"}], indirect=True)
def test_promote_rejects_an_image_of_the_wrong_size_when_told_to(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.upload(task_uuid, jpeg_bytes(512, 512))
    uc.webhook(task_uuid, {"data": [image_item(task_uuid, imageURL=None)]})

    assert uc.service.promote_slot(job_id, 0) == "rejected"

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.error_code) == ("failed", "image_rejected")
    assert uc.storage.list_keys(f"{USE_CASE_PREFIX}jobs/{job_id}/") == [
        f"{USE_CASE_PREFIX}jobs/{job_id}/manifest.json"
    ]
    assert job_state(uc, job_id) == "failed"


# ------------------------------------------------------------------ finish


def test_the_manifest_is_written_last_with_each_slots_outcome(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, (stored_task, failed_task) = uc.submitted(numberResults=2, metadata={"team": "maps"})
    uc.upload(stored_task, jpeg_bytes())
    uc.webhook(stored_task, {"data": [image_item(stored_task, seed=5, cost=0.07)]})
    assert uc.service.promote_slot(job_id, 0) == "stored"
    job_prefix = f"{USE_CASE_PREFIX}jobs/{job_id}/"

    # One slot still open: no manifest yet, and finishing is refused.
    assert uc.storage.list_keys(job_prefix) == [f"{job_prefix}00.jpg"]
    assert uc.service.finish_job(job_id) is False
    assert job_state(uc, job_id) == "running"

    uc.webhook(
        failed_task,
        {"errors": [error_item(failed_task, "providerContentPolicyViolation", "refused")]},
    )

    assert sorted(uc.storage.list_keys(job_prefix)) == [
        f"{job_prefix}00.jpg",
        f"{job_prefix}manifest.json",
    ]
    job = uc.store.get_job(job_id)
    assert job is not None
    assert (job.state, job.manifest_key, job.manifest_version) == (
        "partially_succeeded",
        f"{job_prefix}manifest.json",
        1,
    )
    manifest = uc.manifest(job_id)
    assert (manifest["manifestVersion"], manifest["jobId"], manifest["state"]) == (
        1,
        job_id,
        "partially_succeeded",
    )
    assert manifest["request"]["positivePrompt"] == PROMPT
    assert manifest["metadata"] == {"team": "maps"}
    assert manifest["cost"] == 0.07
    stored, failed = manifest["slots"]
    assert (stored["state"], stored["finalKey"], stored["seed"], stored["error"]) == (
        "stored",
        f"{job_prefix}00.jpg",
        5,
        None,
    )
    assert (failed["state"], failed["finalKey"], failed["error"]) == (
        "failed",
        None,
        {"code": "providerContentPolicyViolation", "message": "refused"},
    )
    head = uc.storage.head(f"{job_prefix}manifest.json")
    assert head is not None and head.content_type == "application/json"
    assert head.metadata["imagine-state"] == "partially_succeeded"
    # Finishing again rewrites nothing.
    assert uc.service.finish_job(job_id) is False


# ------------------------------------------------------------------ expire


def test_at_the_deadline_unfinished_slots_fail_and_the_job_partially_succeeds(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, (done, _silent) = uc.submitted(numberResults=2, deadlineSeconds=60)
    uc.upload(done, jpeg_bytes())
    uc.webhook(done, {"data": [image_item(done)]})
    assert uc.service.promote_slot(job_id, 0) == "stored"

    uc.clock.advance(61)
    uc.service.expire_job(job_id)

    slot = uc.store.get_slot(job_id, 1)
    assert slot is not None and (slot.state, slot.error_code) == ("failed", "deadline")
    assert job_state(uc, job_id) == "partially_succeeded"
    assert [s["state"] for s in uc.manifest(job_id)["slots"]] == ["stored", "failed"]
    assert uc.leases_in_use() == 0


def test_at_the_deadline_a_job_with_nothing_stored_times_out(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, _ = uc.submitted(numberResults=2, deadlineSeconds=60)

    uc.clock.advance(61)
    uc.service.expire_job(job_id)

    assert job_state(uc, job_id) == "timed_out"
    manifest = uc.manifest(job_id)
    assert manifest["state"] == "timed_out"
    assert [s["error"]["code"] for s in manifest["slots"]] == ["deadline", "deadline"]


def test_at_the_deadline_a_received_image_is_still_stored(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted(deadlineSeconds=60)
    uc.upload(task_uuid, jpeg_bytes())
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})

    uc.clock.advance(61)
    uc.service.expire_job(job_id)

    assert slot_states(uc, job_id) == ["stored"]
    assert job_state(uc, job_id) == "succeeded"
    assert uc.storage.head(f"{USE_CASE_PREFIX}jobs/{job_id}/00.jpg") is not None


# ------------------------------------------------------------------ cancel


def test_cancel_ends_the_job_and_a_late_result_is_recorded_as_discarded(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()

    cancelled = uc.service.cancel_job(job_id, "acme")

    assert cancelled.state == "cancelled"
    assert uc.manifest(job_id)["state"] == "cancelled"
    assert uc.manifest(job_id)["slots"][0]["error"]["code"] == "cancelled"
    assert uc.leases_in_use() == 0

    uc.upload(task_uuid, jpeg_bytes())
    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid, cost=0.07)]}) == ["discarded"]

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.cost) == ("discarded", 0.07)
    assert uc.service.promote_slot(job_id, 0, allow_fetch=True) == "noop"
    assert uc.storage.head(f"{USE_CASE_PREFIX}jobs/{job_id}/00.jpg") is None
    assert job_state(uc, job_id) == "cancelled"


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_the_manifest_of_a_job_ended_early_counts_a_late_charged_image(
    use_cases: UseCases, ending: str
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted(deadlineSeconds=60)
    if ending == "cancel":
        uc.service.cancel_job(job_id, "acme")
    else:
        uc.clock.advance(61)
        uc.service.expire_job(job_id)
    assert uc.manifest(job_id)["cost"] == 0

    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid, cost=0.07)]}) == ["discarded"]

    assert uc.service.job_view(uc.service.get_job(job_id))["cost"] == 0.07
    manifest = uc.manifest(job_id)
    assert (manifest["cost"], manifest["slots"][0]["state"]) == (0.07, "discarded")
    assert manifest["manifestVersion"] == 2
    # The same result again changes nothing more.
    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid, cost=0.07)]}) == ["duplicate"]
    assert uc.manifest(job_id)["manifestVersion"] == 2


# ------------------------------------------------------------------ reconcile


def test_reconcile_polls_a_silent_slot_past_the_grace_and_records_its_result(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    item = image_item(task_uuid, status="success", seed=99)
    uc.runware.responses[task_uuid] = [item]

    uc.service.reconcile()
    assert uc.runware.polls() == [], "a slot inside its grace period is not polled"

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    assert uc.runware.polls() == [task_uuid]
    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None
    assert (slot.state, slot.image_uuid, slot.seed) == ("received", item["imageUUID"], 99)
    assert ("finalize", (job_id, 0)) in uc.dispatcher.sent


def test_reconcile_records_a_polled_failure_like_a_webhook_one(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [first] = uc.submitted()
    uc.runware.responses[first] = [
        {
            "taskType": "imageInference",
            "taskUUID": first,
            "status": "error",
            "error": {"code": "timeoutProvider", "message": "took too long"},
        }
    ]

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None
    assert (slot.state, slot.attempt, slot.error_code) == ("pending", 2, "timeoutProvider")
    assert uc.service.submit_job(job_id) == "submitted"
    assert uc.task_uuids(job_id) != [first]


def test_reconcile_hands_a_received_image_left_unstored_to_a_worker(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})
    nudged = len(uc.dispatcher.sent)

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    assert uc.dispatcher.sent[nudged:] == [("finalize", (job_id, 0))]
    assert uc.runware.polls() == [], "a received image is not polled again"


def test_reconcile_leaves_a_slot_still_processing_as_it_was(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    assert uc.runware.polls() == [task_uuid]
    assert slot_states(uc, job_id) == ["submitted"]
    assert job_state(uc, job_id) == "running"


def test_reconcile_redrives_a_job_stuck_in_queued(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create()  # its submit message is lost: nothing consumes the nudge
    nudges = [("submit", (job_id,))]
    assert uc.dispatcher.sent == nudges

    uc.service.reconcile()
    assert uc.dispatcher.sent == nudges, "a fresh job is left to its message"

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    assert uc.dispatcher.sent == [*nudges, ("submit", (job_id,))]
    assert uc.service.submit_job(job_id) == "submitted"
    assert job_state(uc, job_id) == "running"


def test_reconcile_ends_a_job_whose_slots_all_ended(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    # The process that failed the last slot died before it could end the job.
    assert uc.store.transition_slot(
        job_id,
        0,
        ["submitted"],
        "failed",
        task_uuid=task_uuid,
        error_code="providerContentPolicyViolation",
        error_message="refused",
    )
    assert job_state(uc, job_id) == "running"

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    assert job_state(uc, job_id) == "failed"
    assert uc.manifest(job_id)["slots"][0]["error"]["code"] == "providerContentPolicyViolation"


def test_reconcile_ends_a_job_at_its_deadline(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, _ = uc.submitted(deadlineSeconds=60)

    uc.clock.advance(61)
    uc.service.reconcile()

    assert job_state(uc, job_id) == "timed_out"
    assert uc.manifest(job_id)["state"] == "timed_out"


# ------------------------------------------------------------------ operators


def test_an_operator_retry_reopens_a_failed_slot_and_rewrites_the_manifest(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [first] = uc.submitted()
    uc.webhook(first, {"errors": [error_item(first, "providerContentPolicyViolation")]})
    assert (job_state(uc, job_id), uc.manifest(job_id)["manifestVersion"]) == ("failed", 1)
    nudged = len(uc.dispatcher.sent)

    reopened = uc.service.retry_job(job_id)

    assert reopened.state == "running"
    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.attempt) == ("pending", 2)
    assert uc.dispatcher.sent[nudged:] == [("submit", (job_id,))]
    assert uc.service.submit_job(job_id) == "submitted"
    [second] = uc.task_uuids(job_id)
    assert second != first and list(uc.runware.submitted()) == [first, second]
    uc.upload(second, jpeg_bytes())
    uc.webhook(second, {"data": [image_item(second)]})
    assert uc.service.promote_slot(job_id, 0) == "stored"

    job = uc.store.get_job(job_id)
    assert job is not None and (job.state, job.manifest_version) == ("succeeded", 2)
    manifest = uc.manifest(job_id)
    assert (manifest["manifestVersion"], manifest["state"]) == (2, "succeeded")
    assert manifest["slots"][0]["attempt"] == 2
    assert manifest["slots"][0]["taskUUID"] == second
    head = uc.storage.head(f"{USE_CASE_PREFIX}jobs/{job_id}/manifest.json")
    assert head is not None and head.metadata["imagine-manifest-version"] == "2"


def test_replaying_the_dead_letters_reopens_each_dead_slot(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create()
    for _ in range(uc.settings.slot_max_attempts):
        uc.service.submit_job(job_id)
        [task_uuid] = uc.task_uuids(job_id)
        uc.webhook(task_uuid, {"errors": [error_item(task_uuid, "timeoutProvider")]})
    assert slot_states(uc, job_id) == ["dead"] and len(uc.dead_letters()) == 1
    nudged = len(uc.dispatcher.sent)

    assert uc.service.replay_dead_letters() == [job_id]

    assert uc.dead_letters() == []
    assert uc.dispatcher.sent[nudged:] == [("submit", (job_id,))]
    assert job_state(uc, job_id) == "running"
    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.attempt) == ("pending", 4)
    assert uc.service.submit_job(job_id) == "submitted"
    [fourth] = uc.task_uuids(job_id)
    assert len(uc.runware.submitted()) == 4 and fourth == list(uc.runware.submitted())[-1]
    assert uc.webhook(fourth, {"data": [image_item(fourth)]}) == ["received"]
    # Nothing left to replay.
    assert uc.service.replay_dead_letters() == []


# ------------------------------------------------------------------ provider reality


def not_found(task_uuid: str) -> dict[str, object]:
    return {"errors": [error_item(task_uuid, "taskFailedOrNotFound", "No task found")]}


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_a_poll_that_does_not_find_a_live_task_resends_it_under_the_same_taskuuid(
    use_cases: UseCases, untied: bool
) -> None:
    uc = use_cases
    uc.runware.conflicts = True
    job_id, [task_uuid] = uc.submitted()
    uc.runware.lost = {task_uuid}
    uc.runware.lost_untied = untied
    nudged = len(uc.dispatcher.sent)

    uc.clock.advance(GRACE + 1)
    uc.service.reconcile()

    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.task_uuid, slot.attempt) == (
        "pending",
        task_uuid,
        1,
    )
    assert ("submit", (job_id,)) in uc.dispatcher.sent[nudged:]
    assert uc.leases_in_use() == 1, "the task may still be in flight: its lease is kept"

    # Runware answers conflictTaskUUID: the task exists, so the slot keeps waiting for it.
    assert uc.service.submit_job(job_id) == "submitted"
    assert [t["taskUUID"] for t in uc.runware.inference_posts()[-1]] == [task_uuid]
    assert slot_states(uc, job_id) == ["submitted"]
    assert uc.runware.accepted == [task_uuid], "charged once"
    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid)]}) == ["received"]
    assert uc.leases_in_use() == 0


def test_a_lost_task_that_never_existed_is_accepted_once_under_the_same_taskuuid(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.runware.accepted.clear()  # Runware never held it after all

    assert uc.webhook(task_uuid, not_found(task_uuid)) == ["resubmitting"]
    assert uc.service.submit_job(job_id) == "submitted"

    assert uc.runware.accepted == [task_uuid]
    assert list(uc.runware.submitted()) == [task_uuid], "no second taskUUID, no second charge"
    assert slot_states(uc, job_id) == ["submitted"]
    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid)]}) == ["received"]


@pytest.mark.parametrize("slots", [1, 2])
def test_a_conflict_naming_no_task_is_matched_to_the_task_sent(
    use_cases: UseCases, slots: int
) -> None:
    uc = use_cases
    uc.runware.conflicts = True
    uc.runware.conflict_untied = True
    uc.runware.lost_acks = 1  # Runware accepts every task, and the answer is lost
    job_id = uc.create(numberResults=slots)
    with pytest.raises(ProviderError):
        uc.service.submit_job(job_id)
    assert slot_states(uc, job_id) == ["pending"] * slots

    assert uc.service.submit_job(job_id) == "submitted"

    assert slot_states(uc, job_id) == ["submitted"] * slots
    assert uc.leases_in_use() == slots
    assert sorted(uc.runware.accepted) == sorted(uc.task_uuids(job_id)), "each charged once"
    for task_uuid in uc.task_uuids(job_id):
        assert uc.webhook(task_uuid, {"data": [image_item(task_uuid)]}) == ["received"]
    assert uc.leases_in_use() == 0


def test_a_model_fault_pauses_that_model_only_and_a_probe_resumes_it(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [first] = uc.submitted()
    waiting = uc.create(numberResults=2)
    body = {"errors": [error_item(first, "modelDisabled", "disabled")]}

    assert uc.webhook(first, body) == ["retrying"]

    circuit = uc.service.context.circuit
    model = "xai:grok-imagine@image-pro"
    assert not circuit.state().open, "the account is not paused"
    assert circuit.state(model).open and circuit.state(model).code == "modelDisabled"
    slot = uc.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.attempt) == ("pending", 1)
    assert uc.service.submit_job(waiting) == "paused"
    reason = uc.service.get_job(waiting).reason
    assert reason == f"waiting: model {model} paused by the provider (modelDisabled)"
    assert len(uc.runware.inference_posts()) == 1

    uc.clock.advance(uc.settings.circuit_probe_seconds + 1)
    passed = uc.service.reconcile()

    assert passed.probed == 1
    assert not circuit.state(model).open
    assert uc.service.submit_job(job_id) in {"submitted", "done"}
    assert uc.service.submit_job(waiting) == "submitted"
    assert uc.service.get_job(waiting).reason is None
    assert slot_states(uc, job_id) == ["submitted"]


def test_a_model_refused_at_submit_pauses_the_job_with_the_model_named(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=2)
    uc.runware.refusals = [
        None,
        {"code": "modelUnavailable", "message": "gone", "parameter": "model"},
    ]

    assert uc.service.submit_job(job_id) == "submitted"

    assert slot_states(uc, job_id) == ["submitted", "pending"]
    job = uc.service.get_job(job_id)
    assert job.reason is not None and "model xai:grok-imagine@image-pro" in job.reason
    assert not uc.service.context.circuit.state().open
    assert uc.leases_in_use() == 1
    pending = uc.store.get_slot(job_id, 1)
    assert pending is not None and pending.attempt == 1, "a refusal spends no attempt"


def test_an_unknown_item_code_gets_new_attempts_then_the_slot_is_dead(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create()
    outcomes = []
    for _ in range(uc.settings.slot_max_attempts):
        assert uc.service.submit_job(job_id) == "submitted"
        [task_uuid] = uc.task_uuids(job_id)
        outcomes += uc.webhook(task_uuid, {"errors": [error_item(task_uuid, "brandNewCode")]})

    assert outcomes == ["retrying", "retrying", "dead"]
    assert uc.dead_letters() == [(job_id, 0, "brandNewCode")]
    assert job_state(uc, job_id) == "failed"
    assert uc.leases_in_use() == 0


@pytest.mark.parametrize("use_case_settings", [{"RUNWARE_MAX_IN_FLIGHT": "2"}], indirect=True)
def test_the_reason_says_the_job_waits_for_the_budget_until_every_image_is_sent(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=3)

    assert uc.service.submit_job(job_id) == "submitted"

    assert slot_states(uc, job_id) == ["submitted", "submitted", "pending"]
    assert uc.service.get_job(job_id).reason == "waiting: Runware in-flight budget is full"

    done = uc.task_uuids(job_id)[0]
    uc.webhook(done, {"data": [image_item(done)]})
    assert uc.service.submit_job(job_id) == "submitted"
    assert uc.service.get_job(job_id).reason is None


def test_a_duplicate_submit_from_an_old_copy_of_the_job_takes_no_lease(
    use_cases: UseCases,
) -> None:
    from pipeline import submission

    uc = use_cases
    uc.runware.conflicts = True
    job_id = uc.create()
    ctx = uc.service.context
    stale = uc.store.get_job(job_id)  # a second submit read the job while it was pending
    assert stale is not None
    assert uc.service.submit_job(job_id) == "submitted"
    [task_uuid] = uc.task_uuids(job_id)
    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid)]}) == ["received"]
    assert uc.leases_in_use() == 0

    slots = submission.claim_task_uuids(ctx, stale, stale.slots)
    granted, _ = submission.admit(ctx, stale, slots)

    assert granted == []
    assert uc.leases_in_use() == 0
    assert uc.service.get_job(job_id).reason is None


def test_duplicate_submits_racing_webhooks_leave_no_lease_behind(use_cases: UseCases) -> None:
    uc = use_cases
    uc.runware.conflicts = True
    # A fast provider: the webhook of each task arrives before its acknowledgement.
    uc.runware.on_accept = lambda task_uuid: uc.webhook(
        task_uuid, {"data": [image_item(task_uuid)]}
    )
    jobs = [uc.create(numberResults=4) for _ in range(6)]
    barrier = threading.Barrier(4)

    def submit_all() -> None:
        barrier.wait()
        for job_id in jobs:
            for _ in range(3):
                try:
                    uc.service.submit_job(job_id)
                except ProviderError:
                    pass

    threads = [threading.Thread(target=submit_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for job_id in jobs:  # what the woken, delayed nudges would do
        uc.service.submit_job(job_id)

    for job_id in jobs:
        assert slot_states(uc, job_id) == ["received"] * 4
    assert uc.leases_in_use() == 0
    assert len(uc.runware.accepted) == len(set(uc.runware.accepted)) == 24, "nothing paid twice"


# ------------------------------------------------------------------ the model, chosen per job

PRO = "xai:grok-imagine@image-pro"
IMAGE = "xai:grok-imagine@image"
QUALITY = "xai:grok-imagine@image-quality"


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (PRO, {"resolution": "2K"}, {"resolution": "2K"}),
        (IMAGE, {"width": 1408, "height": 704}, {"width": 1408, "height": 704}),
        (QUALITY, {"resolution": "2K"}, {"resolution": "2K"}),
        (None, {"width": 1280, "height": 896}, {"width": 1280, "height": 896}),
    ],
)
def test_a_job_submits_its_own_model_and_size(
    use_cases: UseCases, model: str | None, size: dict[str, object], expected: dict[str, object]
) -> None:
    uc = use_cases
    body: dict[str, object] = {"width": None, "height": None, **size}
    if model:
        body["model"] = model
    job, _ = uc.service.create_job(
        {"positivePrompt": PROMPT, **{k: v for k, v in body.items() if v is not None}}, "acme"
    )

    assert uc.service.submit_job(job.id) == "submitted"

    [task] = uc.runware.submitted().values()
    assert task["model"] == (model or PRO), "no model named: RUNWARE_MODEL"
    assert {name: task[name] for name in expected} == expected
    assert uc.service.get_job(job.id).model == (model or PRO)


@pytest.mark.parametrize(
    "use_case_settings", [{"RUNWARE_ALLOWED_MODELS": f"{PRO},{QUALITY}"}], indirect=True
)
def test_a_model_the_deployment_does_not_allow_is_refused_before_a_job_exists(
    use_cases: UseCases,
) -> None:
    from pipeline.errors import RequestInvalid

    body = {"positivePrompt": PROMPT, "width": 1024, "height": 1024, "model": IMAGE}
    with pytest.raises(RequestInvalid) as caught:
        use_cases.service.create_job(body, "acme")
    assert caught.value.status == 422 and "model" in caught.value.errors
    assert use_cases.store.active_count() == 0
    assert use_cases.runware.inference_posts() == []


# ------------------------------------------------------------------ fallback, only when asked


def sent_models(uc: UseCases) -> dict[str, list[str]]:
    """Every model each taskUUID was posted on, in order."""
    models: dict[str, list[str]] = {}
    for tasks in uc.runware.inference_posts():
        for task in tasks:
            models.setdefault(task["taskUUID"], []).append(task["model"])
    return models


def test_a_refused_first_model_sends_pending_slots_on_the_fallback_and_keeps_sent_ones(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id = uc.create(numberResults=2, model=PRO, fallbackModel=QUALITY)
    uc.runware.refusals = [
        None,
        {"code": "modelUnavailable", "message": "gone", "parameter": "model"},
    ]
    assert uc.service.submit_job(job_id) == "submitted"
    [first, second] = uc.task_uuids(job_id)
    assert slot_states(uc, job_id) == ["submitted", "pending"]
    assert uc.service.context.circuit.state(PRO).open
    nudges = uc.dispatcher.sent.count(("submit", (job_id,)))
    assert nudges >= 2, "created, then the fallback is tried without waiting"
    reason = uc.service.get_job(job_id).reason
    assert reason is not None and PRO in reason and f"fallbackModel {QUALITY}" in reason

    assert uc.service.submit_job(job_id) == "submitted"

    assert slot_states(uc, job_id) == ["submitted", "submitted"]
    assert sent_models(uc) == {first: [PRO], second: [PRO, QUALITY]}, "slot 0 never resent"
    job = uc.service.get_job(job_id)
    assert [slot.model for slot in job.slots] == [PRO, QUALITY]
    assert job.reason is not None and "slots 1 sent on fallbackModel" in job.reason
    for task_uuid, cost in ((first, 0.07), (second, 0.05)):
        assert uc.webhook(task_uuid, {"data": [image_item(task_uuid, cost=cost)]}) == ["received"]
    view = uc.service.job_view(uc.service.get_job(job_id))
    assert view["fallbackModel"] == QUALITY
    assert [(slot["model"], slot["cost"]) for slot in view["slots"]] == [
        (PRO, 0.07),
        (QUALITY, 0.05),
    ]
    uc.service.cancel_job(job_id)
    manifest = uc.manifest(job_id)
    assert [(slot["model"], slot["cost"]) for slot in manifest["slots"]] == [
        (PRO, 0.07),
        (QUALITY, 0.05),
    ]


def test_a_paused_model_sends_a_new_job_on_its_fallback_and_a_job_without_one_waits(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [first] = uc.submitted(model=PRO)
    assert uc.webhook(first, {"errors": [error_item(first, "modelDisabled", "disabled")]}) == [
        "retrying"
    ]
    with_fallback = uc.create(numberResults=2, model=PRO, fallbackModel=IMAGE)
    without = uc.create(numberResults=1, model=PRO)

    assert uc.service.submit_job(with_fallback) == "submitted"
    assert uc.service.submit_job(without) == "paused"

    [a, b] = uc.task_uuids(with_fallback)
    assert sent_models(uc)[a] == [IMAGE] and sent_models(uc)[b] == [IMAGE]
    assert {task["width"] for task in uc.runware.submitted().values()} == {1024}
    reason = uc.service.get_job(without).reason
    assert reason == f"waiting: model {PRO} paused by the provider (modelDisabled)"
    assert uc.service.submit_job(job_id) == "paused", "its own job has no fallback either"
    assert [slot.model for slot in uc.service.get_job(with_fallback).slots] == [IMAGE, IMAGE]


def test_a_job_without_a_fallback_never_changes_model(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create(model=QUALITY, resolution="2K", width=None, height=None)
    uc.runware.refusals = [{"code": "modelDisabled", "message": "off", "parameter": "model"}]

    assert uc.service.submit_job(job_id) == "submitted"
    assert uc.service.submit_job(job_id) == "paused"

    assert list(sent_models(uc).values()) == [[QUALITY]]
    reason = uc.service.get_job(job_id).reason
    assert reason is not None and f"model {QUALITY} paused" in reason
