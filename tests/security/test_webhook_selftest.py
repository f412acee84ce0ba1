"""The webhook path's self-test: answered only under a valid token, and it changes nothing."""

from __future__ import annotations

import pytest

from pipeline.selftest import SERVICE, selftest_id
from pipeline.signing import webhook_token
from tests.security.conftest import WEBHOOK_SECRET, Harness, assert_error

pytestmark = pytest.mark.security


def test_a_signed_self_test_is_answered_and_touches_no_job(harness: Harness) -> None:
    harness.submitted_job()
    before = harness.snapshot()
    probe = selftest_id()
    answer = harness.webhook(probe, {"data": [{"taskUUID": probe, "imageUUID": "i"}]})
    assert answer.status_code == 200
    assert answer.get_json() == {"selftest": probe, "service": SERVICE}
    harness.assert_unchanged(before)


@pytest.mark.parametrize(
    "token",
    ["", "x" * 43, webhook_token("not-the-secret-of-this-server", "selftest-probe")],
    ids=["empty", "forged", "another secret's"],
)
def test_a_self_test_without_a_valid_token_is_refused(harness: Harness, token: str) -> None:
    before = harness.snapshot()
    answer = harness.webhook(selftest_id(), {}, token=token)
    assert_error(answer, 401, "unauthorized")
    harness.assert_unchanged(before)


@pytest.mark.parametrize("probe", ["selftest-", "selftest-x", "selftest-../job", "SELFTEST-1"])
def test_a_self_test_id_that_is_not_prefix_and_uuid_is_404(harness: Harness, probe: str) -> None:
    before = harness.snapshot()
    answer = harness.webhook(probe, {}, token=webhook_token(WEBHOOK_SECRET, probe))
    assert_error(answer, 404)
    harness.assert_unchanged(before)
