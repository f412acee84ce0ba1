"""Webhook URL tokens (HMAC of the taskUUID) and Standard Webhooks signatures for callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence


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
    secret: bytes, message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Headers of a Standard Webhooks signed request: id, timestamp, v1 signature."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signed = f"{message_id}.{ts}.".encode() + body
    signature = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{signature}",
    }
