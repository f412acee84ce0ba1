"""Fair limits against a real Redis: daily caps reserved atomically by concurrent submits, never
twice for a replay, given back when no job is made; the operator's pause holding submission
until resume wakes every held job."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from pipeline import clock, quotas
from pipeline.errors import Conflict, LimitExceeded
from pipeline.quotas import utc_day
from tests.integration.conftest import UseCases, error_item

pytestmark = pytest.mark.integration

BODY = {"positivePrompt": "a lighthouse at dawn", "width": 1024, "height": 1024}
NO_CAPS = {"TENANT_DAILY_IMAGES": "0", "TENANT_DAILY_SPEND_USD": "0", "GLOBAL_DAILY_SPEND_USD": "0"}


def submit_together(count: int, submit: Callable[[int], Any]) -> tuple[int, list[str]]:
    """Run `submit(i)` for i < count on as many threads released at once; returns how many
    made a job and the code of each refusal."""
    start = threading.Barrier(count)
    made: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        start.wait()
        try:
            submit(index)
        except LimitExceeded as exc:
            with lock:
                refused.append(exc.code)
        else:
            with lock:
                made.append(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return len(made), refused


def usage(uc: UseCases, tenant: str = "acme") -> quotas.DailyUsage:
    return quotas.daily_usage(uc.service.context, tenant)


def jobs_of(uc: UseCases, tenant: str) -> int:
    jobs, _cursor = uc.store.list_jobs(tenant, limit=200)
    return len(jobs)


# ------------------------------------------------------------------ daily caps


@pytest.mark.parametrize("use_case_settings", [{"TENANT_DAILY_IMAGES": "50"}], indirect=True)
def test_concurrent_submits_never_pass_the_daily_image_cap(use_cases: UseCases) -> None:
    uc = use_cases
    made, refused = submit_together(
        40, lambda i: uc.service.create_job({**BODY, "numberResults": 3}, "acme")
    )
    # 16 jobs of 3 images fit in 50; the other 24 are refused and count nothing.
    assert (made, refused) == (16, ["daily_image_cap"] * 24)
    assert usage(uc).images == 48
    assert jobs_of(uc, "acme") == 16


@pytest.mark.parametrize("use_case_settings", [{"GLOBAL_DAILY_SPEND_USD": "1"}], indirect=True)
def test_concurrent_submits_of_many_tenants_never_pass_the_global_spend_cap(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    made, refused = submit_together(30, lambda i: uc.service.create_job(BODY, f"tenant-{i}"))
    # One image is estimated at $0.07: 14 fit in $1.00.
    assert (made, refused) == (14, ["global_spend_cap"] * 16)
    assert usage(uc).global_spend_usd == pytest.approx(0.98)
    assert sum(jobs_of(uc, f"tenant-{i}") for i in range(30)) == 14


@pytest.mark.parametrize("use_case_settings", [{"TENANT_DAILY_SPEND_USD": "0.5"}], indirect=True)
def test_the_spend_cap_counts_estimates_and_one_tenant_does_not_use_anothers(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    uc.service.create_job({**BODY, "numberResults": 7}, "acme")  # $0.49
    with pytest.raises(LimitExceeded) as raised:
        uc.service.create_job(BODY, "acme")
    assert raised.value.code == "daily_spend_cap"
    assert "$0.49 of $0.50" in raised.value.message
    uc.service.create_job({**BODY, "numberResults": 7}, "globex")
    assert (usage(uc, "acme").spend_usd, usage(uc, "globex").spend_usd) == (0.49, 0.49)


@pytest.mark.parametrize("use_case_settings", [{"TENANT_DAILY_IMAGES": "4"}], indirect=True)
def test_a_replay_is_counted_once_and_answered_even_at_the_cap(use_cases: UseCases) -> None:
    uc = use_cases
    body = {**BODY, "numberResults": 4}
    job, created = uc.service.create_job(body, "acme", "order-17")
    assert created and usage(uc).images == 4

    again, created_again = uc.service.create_job(body, "acme", "order-17")

    # The cap is full, yet the replay gets its job back: it asks for nothing new.
    assert (again.id, created_again) == (job.id, False)
    assert usage(uc).images == 4
    with pytest.raises(Conflict):
        uc.service.create_job({**body, "positivePrompt": "another"}, "acme", "order-17")
    assert usage(uc).images == 4
    with pytest.raises(LimitExceeded):
        uc.service.create_job(body, "acme", "order-18")
    assert usage(uc).images == 4


@pytest.mark.parametrize("use_case_settings", [{"TENANT_DAILY_IMAGES": "100"}], indirect=True)
def test_concurrent_replays_of_one_key_make_one_job_counted_once(use_cases: UseCases) -> None:
    uc = use_cases
    made, refused = submit_together(
        12, lambda i: uc.service.create_job({**BODY, "numberResults": 5}, "acme", "same-key")
    )
    assert (made, refused) == (12, [])
    assert jobs_of(uc, "acme") == 1
    assert usage(uc).images == 5


def test_a_job_that_is_not_written_gives_its_reservation_back(
    use_cases: UseCases, monkeypatch: pytest.MonkeyPatch
) -> None:
    uc = use_cases

    def lost(*args: Any) -> Any:
        raise redis.ConnectionError("the write was lost")

    monkeypatch.setattr(uc.store, "create_job", lost)
    with pytest.raises(redis.ConnectionError):
        uc.service.create_job({**BODY, "numberResults": 3}, "acme")
    assert (usage(uc).images, usage(uc).spend_usd, usage(uc).global_spend_usd) == (0, 0, 0)


def test_the_day_counters_expire_after_two_days(use_cases: UseCases) -> None:
    uc = use_cases
    uc.service.create_job({**BODY, "numberResults": 2}, "acme")
    day = utc_day(clock.now())
    adapter = quotas.quotas(uc.service.context)
    for key in (adapter.tenant_key(day, "acme"), adapter.global_key(day)):
        assert 2 * 86400 - 60 < uc.store.redis.ttl(key) <= 2 * 86400
    assert usage(uc) == quotas.DailyUsage(day, "acme", 2, 0.14, 0.14)


@pytest.mark.parametrize("use_case_settings", [NO_CAPS], indirect=True)
def test_with_every_cap_off_nothing_is_counted(use_cases: UseCases) -> None:
    uc = use_cases
    uc.service.create_job({**BODY, "numberResults": 20}, "acme")
    assert list(uc.store.redis.scan_iter("imagine:quota:*")) == []


@pytest.mark.parametrize("use_case_settings", [{"TENANT_DAILY_IMAGES": "2"}], indirect=True)
def test_a_job_enqueued_by_name_over_a_cap_becomes_a_failed_job_saying_so(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job = uc.service.create_job_from_message({**BODY, "numberResults": 3}, "acme", None, "m-1")
    assert job.state == "failed"
    assert job.reason is not None and job.reason.startswith("daily_image_cap: daily image cap")
    # A redelivery of the message finds that job; nothing was counted.
    again = uc.service.create_job_from_message({**BODY, "numberResults": 3}, "acme", None, "m-1")
    assert again.id == job.id and usage(uc).images == 0


# ------------------------------------------------------------------ pause / resume


def test_a_pause_holds_every_submit_and_resume_sends_each_image_once(use_cases: UseCases) -> None:
    uc = use_cases
    ctx = uc.service.context
    running, [sent] = uc.submitted()
    assert quotas.pause_submissions(ctx, "provider maintenance") is True
    assert quotas.pause_submissions(ctx, "provider maintenance, day 2") is False
    held = uc.create(numberResults=2)
    retried = running

    assert uc.service.submit_job(held) == "paused"
    # A probe is held too, and so is a slot's new attempt after a transient error.
    assert uc.service.submit_job(held, probe=True) == "paused"
    assert uc.webhook(sent, {"errors": [error_item(sent, "timeoutProvider")]}) == ["retrying"]
    assert uc.service.submit_job(retried) == "paused"
    assert len(uc.runware.inference_posts()) == 1, "nothing was sent while paused"
    reason = "waiting: submission paused by an operator (provider maintenance, day 2)"
    assert uc.service.get_job(held).reason == reason
    state = quotas.submissions_paused(ctx)
    assert state is not None
    assert (state.reason, state.held_jobs) == ("provider maintenance, day 2", 2)

    nudged = len(uc.dispatcher.sent)
    assert quotas.resume_submissions(ctx) == 2

    assert quotas.submissions_paused(ctx) is None
    assert sorted(uc.dispatcher.sent[nudged:]) == sorted(
        [("submit", (held,)), ("submit", (retried,))]
    ), "every held job is woken at once"
    assert uc.service.submit_job(held) == "submitted"
    assert uc.service.submit_job(retried) == "submitted"
    assert uc.service.get_job(held).reason is None
    sent_ids = [task["taskUUID"] for post in uc.runware.inference_posts() for task in post]
    assert len(sent_ids) == len(set(sent_ids)) == 4  # 1 + 2 + the retry's new attempt


def test_a_job_held_by_a_pause_is_redriven_by_the_reconciler_if_its_wake_is_lost(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    ctx = uc.service.context
    quotas.pause_submissions(ctx, "")
    job_id = uc.create()
    assert uc.service.submit_job(job_id) == "paused"
    assert uc.service.get_job(job_id).reason == (
        "waiting: submission paused by an operator (no reason given)"
    )
    quotas.resume_submissions(ctx)
    uc.dispatcher.sent.clear()  # the wake-up is lost

    uc.clock.advance(uc.settings.reconcile_grace_seconds + 1)
    uc.service.reconcile()

    assert uc.dispatcher.sent == [("submit", (job_id,))]
    assert uc.service.submit_job(job_id) == "submitted"


def test_resume_wakes_only_the_jobs_held_before_it(use_cases: UseCases) -> None:
    uc = use_cases
    ctx = uc.service.context
    assert quotas.resume_submissions(ctx) == 0, "resume without a pause is harmless"
    quotas.pause_submissions(ctx, "first")
    first = uc.create()
    assert uc.service.submit_job(first) == "paused"
    adapter = quotas.quotas(ctx)
    was, held = adapter.resume()
    assert (was, held) == (True, 1)
    quotas.pause_submissions(ctx, "second")  # paused again before the held jobs were woken
    second = uc.create()
    assert uc.service.submit_job(second) == "paused"
    assert adapter.pop_held(held) == [first]
    state = quotas.submissions_paused(ctx)
    assert state is not None and state.held_jobs == 1
