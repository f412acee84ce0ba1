"""Tenant isolation: one tenant's key never reads, lists, cancels or replays another's jobs, a
job of another tenant is answered exactly like one that does not exist, and only a well-formed
Bearer key of a known tenant gets in."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pipeline.signing import webhook_token
from tests.security.conftest import (
    ACME_KEY,
    GLOBEX_KEY,
    PROMPT,
    WEBHOOK_SECRET,
    Harness,
    assert_error,
    success_body,
)

pytestmark = pytest.mark.security

REQUEST = {"positivePrompt": PROMPT, "resolution": "1K"}
JOB_STATES = [
    "queued",
    "running",
    "succeeded",
    "partially_succeeded",
    "failed",
    "cancelled",
    "timed_out",
]


def acme_jobs(harness: Harness) -> dict[str, str]:
    """acme has a job in each reachable state: queued, running (submitted), succeeded, failed,
    cancelled."""
    queued, _ = harness.service.create_job(dict(REQUEST), "acme")
    running, _ = harness.submitted_job("acme")
    succeeded, _ = harness.succeeded_job("acme")
    failed, _ = harness.failed_job("acme")
    cancelled, _ = harness.submitted_job("acme")
    harness.service.cancel_job(cancelled, "acme")
    return {
        "queued": queued.id,
        "running": running,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
    }


def same_as_missing(harness: Harness, method: str, path: str, job_id: str) -> None:
    """globex's answer for acme's job equals its answer for an id nobody has."""
    missing = str(uuid.uuid4())
    foreign = harness.api(method, path.format(job_id), key=GLOBEX_KEY)
    absent = harness.api(method, path.format(missing), key=GLOBEX_KEY)
    foreign_body = assert_error(foreign, 404, "not_found")
    absent_body = assert_error(absent, 404, "not_found")
    assert foreign_body["message"].replace(job_id, "<id>") == absent_body["message"].replace(
        missing, "<id>"
    )
    assert foreign_body["errors"] == absent_body["errors"]
    # Every answer has a request id of its own: it says nothing about the job.
    per_answer = {"Content-Length", "X-Request-Id"}
    assert {k: v for k, v in foreign.headers.items() if k not in per_answer} == {
        k: v for k, v in absent.headers.items() if k not in per_answer
    }


# ------------------------------------------------------------------ another tenant's jobs
@pytest.mark.parametrize("state", ["queued", "running", "succeeded", "failed", "cancelled"])
def test_other_tenant_cannot_read_a_job(harness: Harness, state: str) -> None:
    jobs = acme_jobs(harness)
    before = harness.snapshot()
    same_as_missing(harness, "GET", "/v1/jobs/{}", jobs[state])
    harness.assert_unchanged(before)
    assert harness.api("GET", f"/v1/jobs/{jobs[state]}").get_json()["state"] == state


@pytest.mark.parametrize("state", ["queued", "running", "succeeded", "cancelled"])
def test_other_tenant_cannot_cancel_a_job(harness: Harness, state: str) -> None:
    """Not even an ended job answers 409 to another tenant: that would say it exists."""
    jobs = acme_jobs(harness)
    before = harness.snapshot()
    same_as_missing(harness, "POST", "/v1/jobs/{}/cancel", jobs[state])
    harness.assert_unchanged(before)


@pytest.mark.parametrize("state", [None, *JOB_STATES])
def test_other_tenant_lists_none_of_the_jobs(harness: Harness, state: str | None) -> None:
    jobs = acme_jobs(harness)
    own, _ = harness.service.create_job(dict(REQUEST), "globex")
    before = harness.snapshot()
    query = {} if state is None else {"state": state}
    answer = harness.api("GET", "/v1/jobs", key=GLOBEX_KEY, query_string=query)
    assert answer.status_code == 200, answer.get_json()
    listed = {job["id"] for job in answer.get_json()["jobs"]}
    assert listed == ({own.id} if state in {None, "queued"} else set())
    assert not listed & set(jobs.values())
    harness.assert_unchanged(before)


def test_other_tenants_cursor_lists_only_own_jobs(harness: Harness) -> None:
    """A cursor taken from acme's listing, given with globex's key, pages globex's jobs."""
    jobs = acme_jobs(harness)
    own = [harness.service.create_job(dict(REQUEST), "globex")[0].id for _ in range(2)]
    page = harness.api("GET", "/v1/jobs", query_string={"limit": 1}).get_json()
    assert page["nextCursor"] is not None
    before = harness.snapshot()
    seen: list[str] = []
    for cursor in [page["nextCursor"], "1e12", "0", "-1e12"]:
        answer = harness.api(
            "GET", "/v1/jobs", key=GLOBEX_KEY, query_string={"cursor": cursor, "limit": 200}
        )
        assert answer.status_code == 200, answer.get_json()
        seen += [job["id"] for job in answer.get_json()["jobs"]]
    assert set(seen) <= set(own)
    assert not set(seen) & set(jobs.values())
    harness.assert_unchanged(before)


def test_other_tenant_cannot_reach_a_job_by_its_task_uuid(harness: Harness) -> None:
    """A taskUUID is not a job id: it finds nothing through the jobs API for anyone."""
    _, task_uuid = harness.submitted_job("acme")
    before = harness.snapshot()
    for key in (GLOBEX_KEY, ACME_KEY):
        assert_error(harness.api("GET", f"/v1/jobs/{task_uuid}", key=key), 404, "not_found")
    harness.assert_unchanged(before)


# ------------------------------------------------------------------ who gets in
UNAUTHORIZED: dict[str, dict[str, str]] = {
    "no-header": {},
    "empty-header": {"Authorization": ""},
    "empty-bearer": {"Authorization": "Bearer "},
    "bearer-only": {"Authorization": "Bearer"},
    "whitespace-bearer": {"Authorization": "Bearer    "},
    "basic-scheme": {"Authorization": f"Basic {ACME_KEY}"},
    "token-scheme": {"Authorization": f"Token {ACME_KEY}"},
    "no-scheme": {"Authorization": ACME_KEY},
    "tab-separator": {"Authorization": f"Bearer\t{ACME_KEY}"},
    "unknown-key": {"Authorization": "Bearer key-of-nobody-0123456789"},
    "key-prefix": {"Authorization": f"Bearer {ACME_KEY[:-1]}"},
    "key-suffix": {"Authorization": f"Bearer {ACME_KEY}x"},
    "key-case": {"Authorization": f"Bearer {ACME_KEY.upper()}"},
    "two-keys": {"Authorization": f"Bearer {ACME_KEY} {GLOBEX_KEY}"},
    "key-inner-space": {"Authorization": f"Bearer {GLOBEX_KEY[:6]} {GLOBEX_KEY[6:]}"},
    "tenant-name": {"Authorization": "Bearer acme"},
    "tenant-pair": {"Authorization": f"Bearer acme:{ACME_KEY}"},
    "webhook-secret": {"Authorization": f"Bearer {WEBHOOK_SECRET}"},
    "non-ascii-key": {"Authorization": "Bearer clé-ünïcode"},
    "api-key-header": {"X-API-Key": ACME_KEY},
}

ENDPOINTS = [
    ("GET", "/v1/jobs/{job}"),
    ("POST", "/v1/jobs/{job}/cancel"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
]


@pytest.mark.parametrize("headers", list(UNAUTHORIZED.values()), ids=list(UNAUTHORIZED))
def test_bad_credentials_refused_everywhere(harness: Harness, headers: dict[str, str]) -> None:
    job_id, _ = harness.submitted_job("acme")
    before = harness.snapshot()
    for method, path in ENDPOINTS:
        kwargs: dict[str, Any] = {}
        if path == "/v1/jobs" and method == "POST":
            kwargs["json"] = dict(REQUEST)
        answer = harness.api(method, path.format(job=job_id), key=None, headers=headers, **kwargs)
        assert_error(answer, 401, "unauthorized")
    harness.assert_unchanged(before)


def test_unauthorized_answer_does_not_depend_on_the_job(harness: Harness) -> None:
    """Without a valid key, an existing job and a missing one get the same 401."""
    job_id, _ = harness.submitted_job("acme")
    before = harness.snapshot()
    existing = harness.api("GET", f"/v1/jobs/{job_id}", key="wrong")
    missing = harness.api("GET", f"/v1/jobs/{uuid.uuid4()}", key="wrong")
    malformed = harness.api("GET", "/v1/jobs/not-a-uuid", key="wrong")
    bodies = [
        assert_error(answer, 401, "unauthorized") for answer in (existing, missing, malformed)
    ]
    assert bodies[0] == bodies[1] == bodies[2]
    harness.assert_unchanged(before)


@pytest.mark.parametrize(
    "header",
    [f"bearer {ACME_KEY}", f"BEARER {ACME_KEY}", f"Bearer   {ACME_KEY}", f"Bearer {ACME_KEY}   "],
    ids=["lowercase", "uppercase", "extra-spaces", "trailing-spaces"],
)
def test_scheme_case_and_padding_accepted_for_the_right_key(harness: Harness, header: str) -> None:
    """RFC 7235 schemes are case-insensitive; padding around the key is not part of it. The
    key itself still has to match exactly, and it names its own tenant only."""
    job_id, _ = harness.submitted_job("acme")
    answer = harness.api("GET", f"/v1/jobs/{job_id}", key=None, headers={"Authorization": header})
    assert answer.status_code == 200, answer.get_json()
    foreign = harness.api(
        "GET",
        f"/v1/jobs/{job_id}",
        key=None,
        headers={"Authorization": header.replace(ACME_KEY, GLOBEX_KEY)},
    )
    assert_error(foreign, 404, "not_found")


# ------------------------------------------------------------------ idempotency per tenant
@pytest.mark.parametrize("where", ["header", "body"])
def test_idempotency_keys_are_per_tenant(harness: Harness, where: str) -> None:
    body: dict[str, Any] = dict(REQUEST)
    headers: dict[str, str] = {}
    if where == "header":
        headers["Idempotency-Key"] = "order-42"
    else:
        body["idempotencyKey"] = "order-42"
    acme = harness.api("POST", "/v1/jobs", json=body, headers=headers)
    globex = harness.api("POST", "/v1/jobs", key=GLOBEX_KEY, json=body, headers=headers)
    assert acme.status_code == 202 and globex.status_code == 202
    acme_id, globex_id = acme.get_json()["id"], globex.get_json()["id"]
    assert acme_id != globex_id
    # each replay finds its own tenant's job, never the other's
    before = harness.snapshot()
    again = harness.api("POST", "/v1/jobs", key=GLOBEX_KEY, json=body, headers=headers)
    assert again.status_code == 200 and again.get_json()["id"] == globex_id
    assert again.headers["Idempotent-Replayed"] == "true"
    harness.assert_unchanged(before)
    assert_error(harness.api("GET", f"/v1/jobs/{acme_id}", key=GLOBEX_KEY), 404, "not_found")
    assert_error(harness.api("GET", f"/v1/jobs/{globex_id}"), 404, "not_found")


def test_idempotency_key_with_another_body_conflicts_only_within_the_tenant(
    harness: Harness,
) -> None:
    headers = {"Idempotency-Key": "order-43"}
    first = harness.api("POST", "/v1/jobs", json=dict(REQUEST), headers=headers)
    assert first.status_code == 202
    before = harness.snapshot()
    other_body = {**REQUEST, "positivePrompt": "something else entirely"}
    conflict = harness.api("POST", "/v1/jobs", json=other_body, headers=headers)
    body = assert_error(conflict, 409, "conflict")
    assert first.get_json()["id"] not in str(body)
    harness.assert_unchanged(before)
    # the same key and that other body are a new job for globex
    assert (
        harness.api(
            "POST", "/v1/jobs", key=GLOBEX_KEY, json=other_body, headers=headers
        ).status_code
        == 202
    )


# ------------------------------------------------------------------ webhook tokens
def test_webhook_token_of_one_tenants_task_refused_on_anothers(harness: Harness) -> None:
    _, acme_task = harness.submitted_job("acme")
    globex_job, globex_task = harness.submitted_job("globex")
    before = harness.snapshot()
    acme_token = webhook_token(WEBHOOK_SECRET, acme_task)
    answer = harness.webhook(globex_task, success_body(globex_task), token=acme_token)
    assert_error(answer, 401, "unauthorized")
    # nor does acme's own URL carry a result for globex's task
    answer = harness.webhook(acme_task, success_body(globex_task), token=acme_token)
    assert_error(answer, 422, "validation_failed")
    harness.assert_unchanged(before)
    job = harness.store.get_job(globex_job)
    assert job is not None and job.state == "running"
