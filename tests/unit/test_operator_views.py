"""What the on-call reads: --since windows, the stats and attempts tables of `imagine`, and the
documented shapes of the stats and of a retried slot."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagine_client import DayStats, Job
from pipeline import cli
from pipeline.documents import job_view
from pipeline.models import Slot, SlotState
from pipeline.stats import DayStats as StoredDay
from pipeline.stats import parse_since
from tests.unit.conftest import FakeService, make_client
from tests.unit.test_api_document import JOB_ID, ended_job, validator
from tests.unit.test_client import Api

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
FIRST_TASK = "0b6c5c2e-1111-4c8e-9a77-3e1f2b4c5d6e"
SECOND_TASK = "7d1f3a9b-2222-4e21-8f6a-0c2d4e6f8a10"


# ------------------------------------------------------------------ --since


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172_800), ("1w", 604_800),
     ("1h30m", 5400), (" 1h 30m ", 5400), ("0s", 0)],
)  # fmt: skip
def test_a_duration_counts_back_from_now(text: str, seconds: int) -> None:
    assert parse_since(text, NOW) == NOW - seconds


def test_an_iso_time_is_utc_unless_it_names_its_offset() -> None:
    eight = datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.UTC).timestamp()
    assert parse_since("2027-01-15T08:00:00Z", NOW) == eight
    assert parse_since("2027-01-15T08:00:00", NOW) == eight
    assert parse_since("2027-01-15T09:00:00+01:00", NOW) == eight


@pytest.mark.parametrize("text", ["", "1", "h", "1y", "-1h", "1h and more", "yesterday"])
def test_anything_else_is_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, NOW)


def test_an_invalid_since_is_a_422_naming_it() -> None:
    client = make_client(FakeService())
    answer = client.get("/v1/jobs?since=yesterday", headers={"Authorization": "Bearer k"})
    assert answer.status_code == 422
    body = answer.json or {}
    assert body["code"] == "validation_failed" and list(body["errors"]) == ["since"]
    assert "neither a duration" in body["errors"]["since"][0]
    days = client.get("/v1/stats?days=36", headers={"Authorization": "Bearer k"})
    assert days.status_code == 422 and list((days.json or {})["errors"]) == ["days"]


# ------------------------------------------------------------------ tables


def test_a_table_aligns_its_columns_and_right_aligns_numbers() -> None:
    lines = cli.table(["name", "count", "note"], [["a", "7", "x"], ["longer", "123", ""]])
    assert lines == [
        "name    count  note",
        "a           7  x",
        "longer    123",
    ]


def day(tenant: str, **counts: Any) -> DayStats:
    stored = StoredDay(day="2027-01-15", tenant=tenant, **counts)
    return DayStats.from_dict(stored.view())


def test_the_stats_table_has_a_row_per_tenant_and_day_and_a_total() -> None:
    rows = [
        day("acme", created=3, ended={"failed": 1, "succeeded": 2}, images_stored=4,
            spend_usd=0.28, reserved_images=6, reserved_spend_usd=0.42),
        day("other", created=1, ended={"cancelled": 1}, images_failed=1),
    ]  # fmt: skip
    header, acme, other, total = cli.stats_lines(rows)
    assert header.split() == list(cli.STATS_HEADERS)
    assert acme.split() == [
        "2027-01-15", "acme", "3", "2", "0", "1", "0", "0", "4", "0", "$0.2800", "6", "img",
        "$0.4200",
    ]  # fmt: skip
    assert other.split() == [
        "2027-01-15", "other", "1", "0", "0", "0", "1", "0", "0", "1", "$0.0000", "-",
    ]  # fmt: skip
    assert total.split() == ["total", "4", "2", "0", "1", "1", "0", "4", "1", "$0.2800"]


def retried_job() -> Job:
    """Slot 0 stored on its second attempt, the first failed at the provider."""
    job = ended_job()
    job.slots[0].attempt = 2
    job.slots[0].previous_task_uuids = [FIRST_TASK]
    job.slots[0].task_uuid = SECOND_TASK
    job.slots[0].submitted_at = 1_700_000_004.0
    job.slots[0].received_at = 1_700_000_010.5
    job.slots[0].stored_at = 1_700_000_011.0
    job.slots[0].history = [
        {"attempt": 1, "taskUUID": FIRST_TASK, "state": "failed", "model": "m",
         "code": "taskFailed", "message": "boom", "submittedAt": 1_700_000_001.0,
         "receivedAt": None, "endedAt": 1_700_000_002.25},
    ]  # fmt: skip
    return Job.from_dict({**job_view(job), "callbacks": []})


def test_the_attempts_table_shows_each_retired_attempt_before_the_current_one() -> None:
    job = retried_job()
    rows = cli.attempt_rows(job)
    assert rows[0] == [
        "0", "1", "failed", "taskFailed", FIRST_TASK, "m", "+1.0s", "-", "+2.2s",
    ]  # fmt: skip
    assert rows[1][:5] == ["0", "2", "stored", "-", SECOND_TASK]
    assert rows[1][6:] == ["+4.0s", "+10.5s", "+11.0s"]
    failed = rows[2]
    assert failed[:4] == ["1", "2", "failed", "providerContentPolicyViolation"]
    lines = cli.describe(job)
    assert lines[0] == f"job {JOB_ID}  partially_succeeded after 1m00s"
    assert lines[4].split() == list(cli.ATTEMPT_HEADERS)
    assert len(lines) == 5 + len(rows)


def test_a_retried_slots_history_is_in_the_documented_job_view() -> None:
    document = make_client(FakeService()).get("/v1/openapi.json").json or {}
    view = retried_job().raw
    validator(document, "JobView").validate(view)
    slot = view["slots"][0]
    assert slot["previousTaskUUIDs"] == [FIRST_TASK]
    assert slot["history"][0]["endedAt"] == "2023-11-14T22:13:22.250000Z"
    validator(document, "Stats").validate(
        {"days": [StoredDay(day="2027-01-15", tenant="acme").view()]}
    )


def test_a_slot_without_history_keeps_its_retired_taskuuids() -> None:
    slot = Slot(job_id=JOB_ID, slot=0, state=SlotState.PENDING, attempt=2)
    slot.previous_task_uuids = [FIRST_TASK]
    job = ended_job()
    job.slots = [slot]
    rows = cli.attempt_rows(Job.from_dict(job_view(job)))
    assert [row[:5] for row in rows] == [
        ["0", "?", "?", "-", FIRST_TASK],
        ["0", "2", "pending", "-", "-"],
    ]


# ------------------------------------------------------------------ the commands over the API


def run(api: Api, *argv: str) -> int:
    http = httpx.Client(transport=httpx.MockTransport(api))
    environ = {"IMAGINE_API_URL": "https://imagine.test", "IMAGINE_API_KEY": "k"}
    return cli.main(list(argv), environ=environ, cwd=Path("/"), http=http)


def test_stats_and_jobs_since_pass_their_arguments_to_the_api(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = Api()
    stats = {"days": [StoredDay(day="2027-01-15", tenant="acme", created=2).view()]}
    api.answers["GET /v1/stats"] = [httpx.Response(200, json=stats)]
    assert run(api, "stats", "--days", "3") == 0
    out, err = capsys.readouterr()
    assert err.startswith("counters of tenant acme (the API key's), per UTC day")
    assert out.splitlines()[1].split()[:3] == ["2027-01-15", "acme", "2"]
    assert api.requests[-1].url.params["days"] == "3"
    assert run(api, "jobs", "--state", "failed", "--since", "1h", "--json") == 0
    out, err = capsys.readouterr()
    assert (
        out.strip() == "[]"
        and err == "no jobs of the API key's tenant in state failed created since 1h\n"
    )
    assert dict(api.requests[-1].url.params) == {"limit": "51", "state": "failed", "since": "1h"}


def test_the_async_client_reads_the_same_stats() -> None:
    import asyncio

    from imagine_client import AsyncClient

    api = Api()
    stats = {"days": [StoredDay(day="2027-01-15", tenant="acme", images_stored=2).view()]}
    api.answers["GET /v1/stats"] = [httpx.Response(200, json=stats)]

    async def read() -> list[DayStats]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(api))
        async with AsyncClient("https://imagine.test", "k", http=http) as client:
            return await client.stats(1)

    [found] = asyncio.run(read())
    assert (found.day, found.tenant, found.images_stored) == ("2027-01-15", "acme", 2)
    assert found.ended == dict.fromkeys(cli.ENDED_COLUMNS, 0)
    assert api.requests[0].url.params["days"] == "1"
