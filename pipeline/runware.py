"""Runware REST client: array bodies, Bearer auth, errors sorted into what to do about them."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from marshmallow import ValidationError

from pipeline import metrics
from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.schemas import ProviderResult, parse_provider_body, untied_error_result

log = logging.getLogger(__name__)

CONFLICT_CODE = "conflictTaskUUID"
TRANSIENT = ProviderError.TRANSIENT
PERMANENT = ProviderError.PERMANENT
ACCOUNT = ProviderError.ACCOUNT
MODEL = ProviderError.MODEL
CONFLICT = ProviderError.CONFLICT
NOT_FOUND = ProviderError.NOT_FOUND
UNKNOWN = ProviderError.UNKNOWN

# The one error table. A row is (code pattern, kind), matched in order: an exact code first,
# then `*` patterns. Each row names its evidence in ../shared/runware-api.md (section, and the
# source tag [S..] of its Sources list). Runware warns its codes are still being standardised
# (S15), so a code no row knows is UNKNOWN: in an item error it earns a new attempt within
# SLOT_MAX_ATTEMPTS; for a request refused as a whole the HTTP status decides (HTTP_KINDS).
ERROR_TABLE: tuple[tuple[str, str], ...] = (
    # Already accepted: the task exists, keep waiting for it (S9 legacy SDK; §14).
    ("conflictTaskUUID", CONFLICT),
    # The provider does not know the task; the new SDK calls it notFound, not retryable (S11;
    # §14). It does not prove the task never ran: resubmit under the same taskUUID.
    ("taskFailedOrNotFound", NOT_FOUND),
    # Account faults: open the account circuit.
    ("invalidApiKey", ACCOUNT),  # HTTP 401 (S15; §10)
    ("missingApiKey", ACCOUNT),  # SDK raw code (S11; §10)
    ("insufficientPermissions", ACCOUNT),  # SDK raw code (S11; §10), like HTTP 403 (S15)
    ("*Credits*", ACCOUNT),  # the SDK maps any code containing Credits/Balance/Quota to
    ("*Balance*", ACCOUNT),  # "quota"; exact strings not found (S11; §10, UNKNOWN 9)
    ("*Quota*", ACCOUNT),
    # Model faults: pause that model only (§0, §14).
    ("modelDisabled", MODEL),  # SDK raw code (S11; §14)
    ("modelUnavailable", MODEL),  # SDK raw code (S11; §14)
    ("unknownModel", MODEL),  # SDK-only (S11; §14), and what the emulator sends (§13)
    # Server trouble: transient.
    ("internalServerError", TRANSIENT),  # SDK raw code, server-side (S11; §14)
    ("serviceUnavailable", TRANSIENT),  # SDK raw code, server-side (S11; §14)
    ("noAvailableServer", TRANSIENT),  # SDK raw code, server-side (S11; §14)
    ("timeoutProvider", TRANSIENT),  # (S3, S15; §10, §14)
    ("serverError", TRANSIENT),  # the emulator's code for its 5xx answers (§13; HTTP 500 S15)
    ("*RateLimit*", TRANSIENT),  # the SDK maps codes containing RateLimit to rateLimit (S11)
    # The task itself failed at the provider: an explicit failure earns a new attempt.
    ("inferenceError", TRANSIENT),  # SDK raw code (S11; §14)
    ("taskFailed", TRANSIENT),  # SDK raw code (S11; §14)
    ("taskCancelled", TRANSIENT),  # SDK "notFound" (S11); the pipeline never cancels a task
    ("uploadFailed", TRANSIENT),  # SDK raw code: a failed upload as a task error (S11; §14)
    ("mediaStorageFileCouldNotBeMoved", TRANSIENT),  # same (S11; §14)
    # Request faults: permanent, the same request fails the same way.
    ("unknownParameter", PERMANENT),  # SDK validation (S11; §10)
    ("incompatibleParameters", PERMANENT),  # SDK validation (S11; §10)
    ("missingParameter", PERMANENT),  # HTTP 400 bad or missing parameter (S15; §10)
    ("providerContentPolicyViolation", PERMANENT),  # SDK "safety" (S11; §10)
    ("*ContentPolicy*", PERMANENT),  # content policy, however the provider spells it (S11)
    ("invalid*", PERMANENT),  # invalidWidth with min/max (S18; §10); invalidApiKey is above
    ("unsupported*", PERMANENT),  # e.g. unsupportedDimensions, unsupportedTaskType (§13)
)

# The HTTP status of a request refused as a whole, when no row above knows its code
# (S15 statuses; S11/S16b: retry timeouts, 408, 429 and 5xx; never 400/401/402/403).
HTTP_KINDS: dict[int, str] = {
    401: ACCOUNT,  # no valid key (S15)
    402: ACCOUNT,  # balance insufficient (S15)
    403: ACCOUNT,  # key lacks permission (S15)
    408: TRANSIENT,  # request timeout (S11, S12)
    429: TRANSIENT,  # queue capacity exceeded (S15, S16b)
}

_EXACT = {pattern: kind for pattern, kind in ERROR_TABLE if "*" not in pattern}
_PATTERNS = tuple(
    (re.compile("^" + ".*".join(map(re.escape, pattern.split("*"))) + "$"), kind)
    for pattern, kind in ERROR_TABLE
    if "*" in pattern
)


def kind_of_code(code: str | None, parameter: Any = None) -> str:
    """The error table's kind for a provider code; UNKNOWN when no row knows it.

    A refusal naming the `model` parameter is a model fault whatever its code: the catalog
    checked the model id before it was sent, so Runware refusing it means the model is gone
    (the real code for a retired or disabled model is unknown, §14)."""
    kind = _EXACT.get(code or "")
    if kind is None and code:
        kind = next((k for pattern, k in _PATTERNS if pattern.match(code)), None)
    if parameter == "model" and kind in {PERMANENT, UNKNOWN, None}:
        return MODEL
    return kind or UNKNOWN


def kind_of_status(http_status: int | None) -> str:
    """A request refused as a whole, by its HTTP status: no answer at all is transient."""
    if http_status is None or http_status >= 500:
        return TRANSIENT  # 500 internal, 503 capacity, 504 queue wait (S15; S11 retries 5xx)
    return HTTP_KINDS.get(http_status, PERMANENT)  # 400 bad or missing parameter (S15)


def classify(http_status: int | None, code: str | None, parameter: Any = None) -> str:
    """Sort a Runware failure by the error table: its code first, else its HTTP status."""
    kind = kind_of_code(code, parameter)
    return kind_of_status(http_status) if kind == UNKNOWN else kind


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
    entry: dict[str, Any],
    http_status: int | None,
    retry_after: float | None = None,
    *,
    item: bool = False,
) -> ProviderError:
    """A provider error entry; `item` when it is tied to one task (an item error), where a code
    the table does not know stays UNKNOWN unless the status says the provider was in trouble."""
    code = entry.get("code")
    parameter = entry.get("parameter")
    if item:
        kind = kind_of_code(code, parameter)
        if kind == UNKNOWN and kind_of_status(http_status) == TRANSIENT:
            kind = TRANSIENT
    else:
        kind = classify(http_status, code, parameter)
    return ProviderError(
        entry.get("message") or code or "Runware reported an error",
        kind=kind,
        provider_code=code,
        parameter=parameter,
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


def _tie_conflicts(
    raw_errors: list[dict[str, Any]], wanted: list[str], acknowledged: set[Any]
) -> list[dict[str, Any]]:
    """Give a `conflictTaskUUID` entry that names no task the taskUUID it must be about.

    The legacy SDK reads `error.get("taskUUID") or task_uuid` (§14): the entry may lack it.
    It is about a task that was sent and that nothing else in the answer accounts for: the
    one task of the body, or, by elimination, the one left (or each of as many left as there
    are such conflicts, which then all say the same). Anything more ambiguous stays untied:
    those tasks count as unacknowledged and are sent again under the same taskUUIDs."""
    untied = [e for e in raw_errors if not e.get("taskUUID") and e.get("code") == CONFLICT_CODE]
    if not untied:
        return raw_errors
    accounted = acknowledged | {e.get("taskUUID") for e in raw_errors}
    left = [task_uuid for task_uuid in wanted if task_uuid not in accounted]
    if len(left) == 1:
        owners = left * len(untied)
    elif len(left) == len(untied):
        owners = left
    else:
        return raw_errors
    tied = iter(owners)
    return [
        {**entry, "taskUUID": next(tied)} if any(entry is u for u in untied) else entry
        for entry in raw_errors
    ]


def _apply_task_errors(
    outcomes: dict[str, TaskOutcome], raw_errors: list[Any], status: int, retry_after: float | None
) -> None:
    """Errors tied to one of the tasks sent: a conflict means Runware already holds it."""
    for entry in raw_errors:
        if not isinstance(entry, dict) or entry.get("taskUUID") not in outcomes:
            continue
        error = _error_from_entry(entry, status if status >= 400 else 400, retry_after, item=True)
        outcome = outcomes[entry["taskUUID"]]
        if error.kind == ProviderError.CONFLICT:
            outcome.accepted = True  # the provider already holds this task
        else:
            outcome.error = error


def _request_error(
    raw_errors: list[dict[str, Any]], status: int, retry_after: float | None
) -> ProviderError:
    """The error of a request refused as a whole."""
    entry = raw_errors[0] if raw_errors else {}
    if entry:
        return _error_from_entry(entry, status, retry_after)
    return ProviderError(
        f"Runware answered HTTP {status}",
        kind=classify(status, None),
        http_status=status,
        retry_after=retry_after,
    )


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
            metrics.provider_request(None, "timeout")
            raise ProviderError(
                f"Runware did not answer in time ({type(exc).__name__})",
                kind=ProviderError.TRANSIENT,
            ) from None
        except httpx.TransportError as exc:
            metrics.provider_request(None, "transport_error")
            raise ProviderError(
                f"cannot reach Runware ({type(exc).__name__})", kind=ProviderError.TRANSIENT
            ) from None
        metrics.provider_request(response.status_code)
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
        sent = time.monotonic()
        status, body, retry_after = self._post(tasks)
        if status < 400:
            metrics.submit_acknowledged(time.monotonic() - sent)
        wanted = [task["taskUUID"] for task in tasks]
        data = body.get("data") or []
        acknowledged = {item.get("taskUUID") for item in data if isinstance(item, dict)}
        raw_errors = _tie_conflicts(
            [e for e in body.get("errors") or [] if isinstance(e, dict)], wanted, acknowledged
        )
        if status >= 400 and not {e.get("taskUUID") for e in raw_errors}.intersection(wanted):
            raise _request_error(raw_errors, status, retry_after)
        outcomes = {uuid: TaskOutcome(uuid, accepted=False) for uuid in wanted}
        _apply_task_errors(outcomes, raw_errors, status, retry_after)
        try:
            results, _ = parse_provider_body({"data": data})
        except ValidationError as exc:
            raise ProviderError(
                f"unreadable Runware acknowledgement: {exc.messages}",
                kind=ProviderError.TRANSIENT,
                http_status=status,
            ) from None
        for result in results:
            acknowledged_task = outcomes.get(result.task_uuid)
            if acknowledged_task is None:
                continue
            acknowledged_task.accepted = acknowledged_task.error is None
            if result.status != "processing":
                acknowledged_task.results.append(result)
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
        """Poll one task: the cumulative state of each of its images.

        An error entry naming no task in a 2xx answer is about the one task polled; in a 4xx
        or 5xx answer the request as a whole failed (raised, with the table's kind: a
        `taskFailedOrNotFound` of this task comes back as NOT_FOUND)."""
        status, body, retry_after = self._post([{"taskType": "getResponse", "taskUUID": task_uuid}])
        raw_errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        if status >= 400 and not any(e.get("taskUUID") == task_uuid for e in raw_errors):
            raise _request_error(raw_errors, status, retry_after)
        try:
            results, untied = parse_provider_body(body)
        except ValidationError as exc:
            raise ProviderError(
                f"unreadable getResponse answer: {exc.messages}",
                kind=ProviderError.TRANSIENT,
                http_status=status,
            ) from None
        mine = [r for r in results if r.task_uuid == task_uuid]
        if status < 400:
            mine += [untied_error_result(task_uuid, entry) for entry in untied]
        return mine
