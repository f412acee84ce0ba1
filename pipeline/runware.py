"""Runware REST client: array bodies, Bearer auth, errors sorted into what to do about them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from marshmallow import ValidationError

from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.schemas import ProviderResult, parse_provider_body

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}
ACCOUNT_STATUSES = {401, 402, 403}
ACCOUNT_CODES = {
    "invalidApiKey",
    "missingApiKey",
    "insufficientPermissions",
    "unknownModel",
    "modelNotAvailable",
    "modelUnavailable",
}
ACCOUNT_CODE_PARTS = ("Credits", "Balance", "Quota")
# A task the provider lost (not found) gets a new attempt, like a provider timeout.
TRANSIENT_CODES = {
    "timeoutProvider",
    "serverError",
    "internalError",
    "providerUnavailable",
    "taskFailedOrNotFound",
    "taskNotFound",
}
TRANSIENT_CODE_PARTS = ("RateLimit", "Timeout", "timeout", "Overloaded", "Capacity")
CONFLICT_CODE = "conflictTaskUUID"
NOT_FOUND_CODES = {"taskFailedOrNotFound", "taskNotFound", "taskCancelled"}


def classify(http_status: int | None, code: str | None) -> str:
    """Sort a Runware failure: retry it, fail the image, or pause the account."""
    if code == CONFLICT_CODE:
        return ProviderError.CONFLICT
    if code and (code in ACCOUNT_CODES or any(part in code for part in ACCOUNT_CODE_PARTS)):
        return ProviderError.ACCOUNT
    if http_status in ACCOUNT_STATUSES:
        return ProviderError.ACCOUNT
    if code and (code in TRANSIENT_CODES or any(part in code for part in TRANSIENT_CODE_PARTS)):
        return ProviderError.TRANSIENT
    if http_status is None or http_status in TRANSIENT_STATUSES or http_status >= 500:
        return ProviderError.TRANSIENT
    return ProviderError.PERMANENT


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_from_entry(
    entry: dict[str, Any], http_status: int | None, retry_after: float | None = None
) -> ProviderError:
    code = entry.get("code")
    return ProviderError(
        entry.get("message") or code or "Runware reported an error",
        kind=classify(http_status if http_status and http_status >= 400 else None, code)
        if code
        else classify(http_status, None),
        provider_code=code,
        parameter=entry.get("parameter"),
        http_status=http_status,
        retry_after=retry_after,
        task_uuid=entry.get("taskUUID"),
    )


@dataclass
class TaskOutcome:
    """What Runware said about one submitted task."""

    task_uuid: str
    accepted: bool
    error: ProviderError | None = None
    results: list[ProviderResult] = field(default_factory=list)


def _apply_task_errors(
    outcomes: dict[str, TaskOutcome], raw_errors: list[Any], status: int, retry_after: float | None
) -> None:
    """Errors tied to one of the tasks sent: a conflict means Runware already holds it."""
    for entry in raw_errors:
        if not isinstance(entry, dict) or entry.get("taskUUID") not in outcomes:
            continue
        error = _error_from_entry(entry, status if status >= 400 else 400, retry_after)
        outcome = outcomes[entry["taskUUID"]]
        if error.kind == ProviderError.CONFLICT:
            outcome.accepted = True  # the provider already holds this task
        else:
            outcome.error = error


class RunwareClient:
    """Talks to Runware's REST endpoint over an injected `httpx.Client`."""

    def __init__(self, http: httpx.Client, api_key: str, api_url: str) -> None:
        self._http = http
        self._api_key = api_key
        self._api_url = api_url

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.Client | None = None) -> RunwareClient:
        client = http or httpx.Client(
            timeout=httpx.Timeout(settings.runware_timeout_seconds, connect=5.0),
            headers={"User-Agent": "imagine-pipeline/0.1"},
        )
        return cls(client, settings.require_runware_key(), settings.runware_api_url)

    def close(self) -> None:
        self._http.close()

    def _post(self, tasks: list[dict[str, Any]]) -> tuple[int, dict[str, Any], float | None]:
        try:
            response = self._http.post(
                self._api_url,
                content=json.dumps(tasks).encode(),
                headers={
                    "Authorization": f"Bearer {self._api_key}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
            )
        except httpx.TimeoutException as exc:
            raise ProviderError(
                f"Runware did not answer in time ({type(exc).__name__})",
                kind=ProviderError.TRANSIENT,
            ) from None
        except httpx.TransportError as exc:
            raise ProviderError(
                f"cannot reach Runware ({type(exc).__name__})", kind=ProviderError.TRANSIENT
            ) from None
        retry_after = _retry_after(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # A 2xx that cannot be read leaves each task's fate unknown: retry with the same UUIDs.
            kind = (
                classify(response.status_code, None)
                if response.status_code >= 400
                else ProviderError.TRANSIENT
            )
            raise ProviderError(
                f"Runware answered HTTP {response.status_code} without a JSON object",
                kind=kind,
                http_status=response.status_code,
                retry_after=retry_after,
            )
        return response.status_code, body, retry_after

    def submit(self, tasks: list[dict[str, Any]]) -> dict[str, TaskOutcome]:
        """POST tasks in one array body; return what happened to each, by taskUUID.

        Raises `ProviderError` when the request as a whole failed (network, auth, overload):
        then the outcome of every task is unknown and a retry must reuse the same taskUUIDs.
        """
        status, body, retry_after = self._post(tasks)
        wanted = [task["taskUUID"] for task in tasks]
        raw_errors = body.get("errors") or []
        tied = {entry.get("taskUUID") for entry in raw_errors if isinstance(entry, dict)}
        if status >= 400 and not tied.intersection(wanted):
            entry = next((e for e in raw_errors if isinstance(e, dict)), {})
            raise (
                _error_from_entry(entry, status, retry_after)
                if entry
                else ProviderError(
                    f"Runware answered HTTP {status}",
                    kind=classify(status, None),
                    http_status=status,
                    retry_after=retry_after,
                )
            )
        outcomes = {uuid: TaskOutcome(uuid, accepted=False) for uuid in wanted}
        _apply_task_errors(outcomes, raw_errors, status, retry_after)
        try:
            results, _ = parse_provider_body({"data": body.get("data") or []})
        except ValidationError as exc:
            raise ProviderError(
                f"unreadable Runware acknowledgement: {exc.messages}",
                kind=ProviderError.TRANSIENT,
                http_status=status,
            ) from None
        for result in results:
            acknowledged = outcomes.get(result.task_uuid)
            if acknowledged is None:
                continue
            acknowledged.accepted = acknowledged.error is None
            if result.status != "processing":
                acknowledged.results.append(result)
        for outcome in outcomes.values():
            if not outcome.accepted and outcome.error is None:
                outcome.error = ProviderError(
                    "Runware did not acknowledge this task",
                    kind=ProviderError.TRANSIENT,
                    http_status=status,
                    task_uuid=outcome.task_uuid,
                )
        return outcomes

    def get_response(self, task_uuid: str) -> list[ProviderResult]:
        """Poll one task: the cumulative state of each of its images."""
        status, body, retry_after = self._post([{"taskType": "getResponse", "taskUUID": task_uuid}])
        raw_errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        if status >= 400 and not any(e.get("taskUUID") == task_uuid for e in raw_errors):
            entry = raw_errors[0] if raw_errors else {}
            raise (
                _error_from_entry(entry, status, retry_after)
                if entry
                else ProviderError(
                    f"Runware answered HTTP {status}",
                    kind=classify(status, None),
                    http_status=status,
                    retry_after=retry_after,
                )
            )
        try:
            results, _ = parse_provider_body(body)
        except ValidationError as exc:
            raise ProviderError(
                f"unreadable getResponse answer: {exc.messages}",
                kind=ProviderError.TRANSIENT,
                http_status=status,
            ) from None
        return [r for r in results if r.task_uuid == task_uuid]
