"""Webhook URL tokens and Standard Webhooks signatures on outbound callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

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


def whsec(seed: bytes) -> str:
    """A Standard Webhooks secret over 32 bytes made from `seed`."""
    return "whsec_" + base64.b64encode(hashlib.sha256(seed).digest()).decode()


CALLBACK = whsec(b"callback")
NEXT_CALLBACK = whsec(b"next callback")
BODY = b'{"type":"job.ended","data":{"id":"j1"}}'


def test_standard_webhooks_signature_matches_the_spec() -> None:
    """HMAC-SHA256 of "id.timestamp.body" under the base64-decoded key, base64, after "v1,"."""
    headers = sign_callback([CALLBACK], "msg_2Lq", BODY, timestamp=1_700_000_000)
    key = base64.b64decode(CALLBACK.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, b"msg_2Lq.1700000000." + BODY, hashlib.sha256).digest()
    ).decode()
    assert headers == {
        "webhook-id": "msg_2Lq",
        "webhook-timestamp": "1700000000",
        "webhook-signature": f"v1,{expected}",
    }


def test_the_reference_library_verifies_a_signed_callback() -> None:
    headers = sign_callback([CALLBACK], "job-1-ended-1", BODY)
    assert Webhook(CALLBACK).verify(BODY, headers) == json.loads(BODY)


def test_a_tampered_body_fails_verification() -> None:
    headers = sign_callback([CALLBACK], "job-1-ended-1", BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(CALLBACK).verify(BODY.replace(b"j1", b"j2"), headers)


def test_another_secret_fails_verification() -> None:
    headers = sign_callback([CALLBACK], "job-1-ended-1", BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEXT_CALLBACK).verify(BODY, headers)


def test_an_old_timestamp_fails_verification() -> None:
    """A replayed callback: the signature is right, but older than the verifier's tolerance."""
    headers = sign_callback([CALLBACK], "job-1-ended-1", BODY, timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(CALLBACK).verify(BODY, headers)


def test_a_changed_id_or_timestamp_fails_verification() -> None:
    headers = sign_callback([CALLBACK], "job-1-ended-1", BODY)
    for name, value in [
        ("webhook-id", "job-1-ended-2"),
        ("webhook-timestamp", str(int(headers["webhook-timestamp"]) - 1)),
    ]:
        with pytest.raises(WebhookVerificationError):
            Webhook(CALLBACK).verify(BODY, {**headers, name: value})


def test_while_a_secret_rotates_a_receiver_holding_either_one_verifies() -> None:
    headers = sign_callback([CALLBACK, NEXT_CALLBACK], "job-1-ended-1", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(CALLBACK).verify(BODY, headers) == json.loads(BODY)
    assert Webhook(NEXT_CALLBACK).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(b"a third secret")).verify(BODY, headers)


def test_a_callback_is_never_signed_without_a_secret() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        sign_callback([], "m", b"{}")


def test_a_signature_changes_with_the_body_and_the_timestamp() -> None:
    first = sign_callback([CALLBACK], "m", b"{}", timestamp=1)["webhook-signature"]
    assert sign_callback([CALLBACK], "m", b"{ }", timestamp=1)["webhook-signature"] != first
    assert sign_callback([CALLBACK], "m", b"{}", timestamp=2)["webhook-signature"] != first


def test_the_timestamp_defaults_to_now() -> None:
    headers = sign_callback([CALLBACK], "m", b"{}")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
