"""The caps' arithmetic: UTC days, the wait until the next one, estimated spend, the refusals,
and whom the jobs API counts a request against."""

from __future__ import annotations

import calendar
from unittest.mock import MagicMock

import pytest
from flask import Flask

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.quotas import (
    QUOTA_TTL_SECONDS,
    Reservation,
    cap_exceeded,
    estimated_spend,
    paused_reason,
    seconds_to_utc_midnight,
    usd_to_micros,
    utc_day,
)
from pipeline.storage import MemoryObjectStorage
from webhooks.ratelimit import rate_key

pytestmark = pytest.mark.unit

PRO = "xai:grok-imagine@image-pro"
IMAGE = "xai:grok-imagine@image"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second))


def context(**env: str) -> Context:
    # Only the settings are read by the functions under test.
    return Context(
        settings=Settings.from_env(env),
        store=MagicMock(),
        storage=MemoryObjectStorage(),
        dispatcher=MagicMock(),
        circuit=MagicMock(),
        budget=MagicMock(),
        http=MagicMock(),
    )


def test_a_day_is_the_utc_day_whatever_the_local_zone() -> None:
    assert utc_day(utc(2024, 2, 29, 23, 59, 59) + 0.999) == "2024-02-29"
    assert utc_day(utc(2024, 3, 1)) == "2024-03-01"
    assert utc_day(utc(2023, 12, 31, 23, 59, 59)) == "2023-12-31"
    assert utc_day(utc(2024, 1, 1, 0, 0, 1)) == "2024-01-01"


def test_the_wait_runs_to_the_next_utc_midnight() -> None:
    assert seconds_to_utc_midnight(utc(2024, 3, 1)) == 86400
    assert seconds_to_utc_midnight(utc(2024, 3, 1, 23, 59, 59) + 0.5) == pytest.approx(0.5)
    assert seconds_to_utc_midnight(utc(2024, 3, 1, 12)) == 12 * 3600
    # The counters of a day outlive its end, so a give-back right after midnight finds them.
    assert QUOTA_TTL_SECONDS == 2 * 86400


def test_spend_is_counted_in_whole_micro_dollars() -> None:
    assert usd_to_micros(0.07) == 70_000
    assert usd_to_micros(500.0) == 500_000_000
    assert usd_to_micros(0.1 + 0.2) == 300_000
    # Seven jobs of 0.07 reach 0.49 exactly, where floats would not.
    assert sum(usd_to_micros(0.07) for _ in range(7)) == usd_to_micros(0.49)


def test_estimated_spend_is_the_catalog_price_on_the_dearer_of_model_and_fallback() -> None:
    assert estimated_spend({"model": PRO, "numberResults": 4}) == pytest.approx(0.28)
    edit = {"model": PRO, "numberResults": 2, "inputs": {"referenceImages": ["a", "b"]}}
    assert estimated_spend(edit) == pytest.approx(2 * (0.072 + 2 * 0.002))
    cheap_first = {"model": IMAGE, "numberResults": 3, "fallbackModel": PRO}
    assert estimated_spend(cheap_first) == pytest.approx(3 * 0.07)
    dear_first = {"model": PRO, "numberResults": 3, "fallbackModel": IMAGE}
    assert estimated_spend(dear_first) == pytest.approx(3 * 0.07)
    assert estimated_spend({"model": IMAGE, "numberResults": 3}) == pytest.approx(0.06)


@pytest.mark.parametrize(
    ("code", "used", "expected"),
    [
        (
            "daily_image_cap",
            4998,
            "daily image cap reached: tenant acme has 4998 of 5000 images for 2024-03-01 (UTC) "
            "and this job asks for 4; it starts again at 00:00 UTC",
        ),
        (
            "daily_spend_cap",
            499_900_000,
            "daily spend cap reached: tenant acme estimated $499.90 of $500.00 for 2024-03-01 "
            "(UTC) and this job is estimated at $0.28; it starts again at 00:00 UTC",
        ),
        (
            "global_spend_cap",
            1_999_800_000,
            "global daily spend cap reached: all tenants together estimated $1999.80 of "
            "$2000.00 for 2024-03-01 (UTC) and this job is estimated at $0.28; it starts again "
            "at 00:00 UTC",
        ),
    ],
)
def test_a_refusal_names_its_cap_the_numbers_and_waits_to_midnight(
    code: str, used: int, expected: str
) -> None:
    now = utc(2024, 3, 1, 22, 30) + 0.25
    asked = Reservation(day="2024-03-01", tenant="acme", images=4, spend_micros=280_000)
    refusal = cap_exceeded(context(), code, used, asked, now)
    assert (refusal.status, refusal.code, refusal.message) == (429, code, expected)
    assert refusal.retry_after == 5400  # 1 h 29 min 59.75 s, in whole seconds up


def test_a_paused_job_says_an_operator_paused_submission() -> None:
    assert paused_reason("provider maintenance") == (
        "waiting: submission paused by an operator (provider maintenance)"
    )


def test_a_request_is_counted_against_its_tenant_else_its_address() -> None:
    settings = Settings.from_env({"API_KEYS": "acme:key-a,globex:key-g"})
    app = Flask("test")

    def key(headers: dict[str, str]) -> str:
        with app.test_request_context(headers=headers, environ_base={"REMOTE_ADDR": "10.1.2.3"}):
            return rate_key(settings)

    assert key({"Authorization": "Bearer key-a"}) == "tenant:acme"
    assert key({"Authorization": "bearer  key-g "}) == "tenant:globex"
    assert key({"Authorization": "Bearer nope"}) == "address:10.1.2.3"
    assert key({"Authorization": "Basic key-a"}) == "address:10.1.2.3"
    assert key({}) == "address:10.1.2.3"
