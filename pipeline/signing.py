"""Webhook URL tokens (HMAC of the taskUUID) and Standard Webhooks signatures for callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook


def webhook_token(secret: str, task_uuid: str) -> str:
    digest = hmac.new(secret.encode(), f"runware-webhook:{task_uuid}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def verify_webhook_token(secrets: Sequence[str], task_uuid: str, token: str | None) -> bool:
    """Constant-time check of a token against every secret still accepted (rotation)."""
    if not token:
        return False
    matched = False
    for secret in secrets:
        # Evaluate every secret so timing does not reveal which one matched.
        # Bytes, because compare_digest raises on non-ASCII str and a token comes from the URL.
        matched |= hmac.compare_digest(webhook_token(secret, task_uuid).encode(), token.encode())
    return matched


def sign_callback(
    secrets: Sequence[str], message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers of a request: its id, its timestamp and one `v1` signature per
    `whsec_` secret, space-separated, so a receiver holding any one of them verifies it while a
    secret rotates."""
    if not secrets:
        raise ValueError("a callback is never sent unsigned: no secret to sign it")
    ts = int(time.time()) if timestamp is None else timestamp
    when = datetime.fromtimestamp(ts, UTC)
    # The reference library signs text; a body we encode ourselves is UTF-8 (ASCII JSON).
    text = body.decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(
            Webhook(secret).sign(message_id, when, text) for secret in secrets
        ),
    }
