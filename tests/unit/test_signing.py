"""Webhook URL tokens and Standard Webhooks signatures on outbound callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pipeline.signing import sign_callback, verify_webhook_token, webhook_token

pytestmark = pytest.mark.unit

OLD = "old-secret-0123456789"
NEW = "new-secret-9876543210"
TASK = "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10"
OTHER = "1b2c3d4e-5f60-4718-9a0b-1c2d3e4f5a6b"


def test_a_token_round_trips() -> None:
    token = webhook_token(NEW, TASK)
    assert verify_webhook_token([NEW], TASK, token)


def test_a_token_is_url_safe_and_stable() -> None:
    token = webhook_token(NEW, TASK)
    assert token == webhook_token(NEW, TASK)
    assert token.replace("-", "").replace("_", "").isalnum()
    assert "=" not in token


def test_rotation_keeps_tokens_of_the_old_secret_valid() -> None:
    old_token = webhook_token(OLD, TASK)
    new_token = webhook_token(NEW, TASK)
    assert old_token != new_token
    assert verify_webhook_token([NEW, OLD], TASK, old_token)
    assert verify_webhook_token([NEW, OLD], TASK, new_token)
    # Once the old secret is dropped, its tokens stop working.
    assert not verify_webhook_token([NEW], TASK, old_token)


@pytest.mark.parametrize("token", ["", None, "not-a-token", "é-non-ascii", "A" * 43])
def test_a_wrong_or_empty_token_is_refused(token: str | None) -> None:
    assert not verify_webhook_token([NEW, OLD], TASK, token)


def test_a_token_for_another_task_is_refused() -> None:
    assert not verify_webhook_token([NEW], OTHER, webhook_token(NEW, TASK))


def test_no_secrets_verify_nothing() -> None:
    assert not verify_webhook_token([], TASK, webhook_token(NEW, TASK))


def test_a_token_from_another_secret_is_refused() -> None:
    assert not verify_webhook_token([NEW], TASK, webhook_token("another-secret-xyz", TASK))


def test_standard_webhooks_signature_matches_the_spec() -> None:
    secret = b"callback-secret-for-tests"
    body = b'{"type":"job.ended","data":{"id":"j1"}}'
    headers = sign_callback(secret, "msg_2Lq", body, timestamp=1_700_000_000)
    expected = base64.b64encode(
        hmac.new(secret, b"msg_2Lq.1700000000." + body, hashlib.sha256).digest()
    ).decode()
    assert headers == {
        "webhook-id": "msg_2Lq",
        "webhook-timestamp": "1700000000",
        "webhook-signature": f"v1,{expected}",
    }


def test_a_signature_changes_with_the_body_and_the_timestamp() -> None:
    secret = b"callback-secret-for-tests"
    first = sign_callback(secret, "m", b"{}", timestamp=1)["webhook-signature"]
    assert sign_callback(secret, "m", b"{ }", timestamp=1)["webhook-signature"] != first
    assert sign_callback(secret, "m", b"{}", timestamp=2)["webhook-signature"] != first


def test_the_timestamp_defaults_to_now() -> None:
    headers = sign_callback(b"k", "m", b"{}")
    assert headers["webhook-timestamp"].isdigit()
    assert int(headers["webhook-timestamp"]) > 1_700_000_000
