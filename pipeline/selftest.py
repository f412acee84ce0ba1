"""The webhook path checked at start: a signed self-test request to PUBLIC_BASE_URL's receiver."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httpx

from pipeline import metrics
from pipeline.config import Settings
from pipeline.signing import webhook_token

log = logging.getLogger(__name__)

# A self-test id stands where a taskUUID does: the prefix keeps it apart from every task's.
PREFIX = "selftest-"
SERVICE = "imagine-pipeline receiver"
PROBE_TIMEOUT = 5.0
# A worker may start before the receiver: it looks again before it reports a failure.
WORKER_DELAYS = (1.0, 2.0, 4.0, 8.0)


def selftest_id() -> str:
    return f"{PREFIX}{uuid.uuid4()}"


def is_selftest_id(value: str) -> bool:
    if not value.startswith(PREFIX):
        return False
    try:
        return str(uuid.UUID(value[len(PREFIX) :])) == value[len(PREFIX) :]
    except ValueError:
        return False


def selftest_answer(probe_id: str) -> dict[str, str]:
    """The receiver's answer to a self-test whose token it verified: no job is read or written."""
    return {"selftest": probe_id, "service": SERVICE}


@dataclass(frozen=True)
class ProbeResult:
    """What a self-test to the webhook path found: `url` is the one tried, without its token."""

    ok: bool
    outcome: str  # ok, refused, timeout, unauthorized, wrong_service, error
    url: str
    detail: str

    def line(self) -> str:
        if self.ok:
            return f"webhook self-test: POST {self.url} reached the receiver: {self.detail}"
        return (
            f"webhook self-test FAILED: POST {self.url}: {self.detail}; Runware's webhooks will "
            "not arrive, each result waits for the reconciler's poll (RECONCILE_GRACE_SECONDS)"
        )


def _where(base_url: str) -> str:
    """host:port the URL connects to, saying so when the port is the scheme's default."""
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if parts.port is not None:
        return f"{host}:{parts.port}"
    default = 443 if parts.scheme == "https" else 80
    return f"{host}:{default} (PUBLIC_BASE_URL names no port)"


def probe_webhook_path(
    settings: Settings, *, http: httpx.Client | None = None, timeout: float = PROBE_TIMEOUT
) -> ProbeResult:
    """POST a self-test, signed like a webhook, to PUBLIC_BASE_URL's webhook path and say what
    answered: the receiver (200 naming the self-test), one with other secrets (401), another
    service, nothing (connection refused) or nothing in time."""
    probe_id = selftest_id()
    base = settings.public_base_url.rstrip("/")
    url = f"{base}/webhooks/runware/{probe_id}"
    token = webhook_token(settings.require_webhook_secrets()[0], probe_id)
    client = http or httpx.Client(timeout=timeout, follow_redirects=False)
    try:
        answer = client.post(f"{url}?token={quote(token)}", json={"selftest": probe_id})
    except httpx.TimeoutException:
        return ProbeResult(False, "timeout", url, f"no answer from {_where(base)} in {timeout:g}s")
    except httpx.ConnectError as exc:
        reason = str(exc) or type(exc).__name__
        return ProbeResult(False, "refused", url, f"cannot connect to {_where(base)}: {reason}")
    except httpx.HTTPError as exc:
        return ProbeResult(False, "error", url, f"{type(exc).__name__}: {exc}")
    finally:
        if http is None:
            client.close()
    return _judge(answer, url, probe_id)


def _judge(answer: httpx.Response, url: str, probe_id: str) -> ProbeResult:
    if answer.status_code == 401:
        return ProbeResult(
            False,
            "unauthorized",
            url,
            "the receiver refused the self-test's token (401): WEBHOOK_SECRETS differ between "
            "this process and the receiver at that URL",
        )
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code == 200 and body == selftest_answer(probe_id):
        return ProbeResult(True, "ok", url, "200")
    server = answer.headers.get("server", "no Server header")
    return ProbeResult(
        False,
        "wrong_service",
        url,
        f"another service answered: HTTP {answer.status_code} ({server}), not this pipeline's "
        "receiver",
    )


def report(result: ProbeResult) -> ProbeResult:
    """Log the result (an error when it failed) and count it."""
    metrics.webhook_selftest(result.outcome)
    extra = {"url": result.url, "outcome": result.outcome}
    if result.ok:
        log.info(result.line(), extra=extra)
    else:
        log.error(result.line(), extra=extra)
    return result


def probe_until_reached(
    settings: Settings, delays: Sequence[float] = WORKER_DELAYS, *, timeout: float = PROBE_TIMEOUT
) -> ProbeResult:
    """Probe after each delay until the receiver answers; report the last result only."""
    result = probe_webhook_path(settings, timeout=timeout)
    for delay in delays:
        # A refusal or a wrong answer will not change by waiting; only silence might.
        if result.ok or result.outcome in {"unauthorized", "wrong_service"}:
            break
        time.sleep(delay)
        result = probe_webhook_path(settings, timeout=timeout)
    return report(result)


def probe_in_background(settings: Settings) -> threading.Thread:
    """A worker's start: probe without holding it up (the receiver may start later)."""
    thread = threading.Thread(
        target=probe_until_reached, args=(settings,), name="webhook-selftest", daemon=True
    )
    thread.start()
    return thread
