"""Each call of the jobs API as a request to send and an answer to read, shared by the sync and
the asyncio client (neither does any I/O here)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from imagine_client.errors import DownloadFailed, ImagineError, InvalidResponse, error_from_answer
from imagine_client.models import DayStats, Job, Page, Slot
from imagine_client.retry import Replay, retry_after_seconds

REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Call:
    """One HTTP request: `url` is a path under the API's base URL, or an absolute URL (a
    presigned one, sent without the API key)."""

    method: str
    url: str
    params: dict[str, str | int] | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    replay: Replay = Replay.ALWAYS
    authorized: bool = True

    @property
    def absolute(self) -> bool:
        return self.url.startswith(("http://", "https://"))


def _job_path(job_id: str) -> str:
    # Quoted whole: an id holding "/" or "?" stays one path segment.
    return f"/v1/jobs/{quote(job_id, safe='')}"


def submit(
    request: Mapping[str, Any],
    *,
    idempotency_key: str | None,
    callback_url: str | None,
    metadata: Mapping[str, str] | None,
    deadline_seconds: int | None,
) -> Call:
    """POST /v1/jobs with an idempotency key: the caller's, the request's, or a new one, the
    same for every retry of this call, so a retried submit never makes a second job."""
    body = dict(request)
    in_body = body.get("idempotencyKey")
    if idempotency_key is not None and in_body is not None and in_body != idempotency_key:
        raise ValueError("idempotency_key differs from the request's idempotencyKey")
    key = idempotency_key or (in_body if isinstance(in_body, str) else None) or str(uuid.uuid4())
    for name, value in (
        ("callbackURL", callback_url),
        ("metadata", dict(metadata) if metadata is not None else None),
        ("deadlineSeconds", deadline_seconds),
    ):
        if value is not None:
            body[name] = value
    return Call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": key})


def get(job_id: str) -> Call:
    return Call("GET", _job_path(job_id))


def list_page(state: str | None, cursor: str | None, limit: int, since: str | None = None) -> Call:
    params: dict[str, str | int] = {"limit": limit}
    for name, value in (("state", state), ("cursor", cursor), ("since", since)):
        if value is not None:
            params[name] = value
    return Call("GET", "/v1/jobs", params=params)


def stats(days: int) -> Call:
    return Call("GET", "/v1/stats", params={"days": days})


def day_stats(response: httpx.Response) -> list[DayStats]:
    body = _json(response)
    days = body.get("days") if isinstance(body, dict) else None
    if not isinstance(days, list):
        raise InvalidResponse("GET /v1/stats answered without a list of days")
    return [DayStats.from_dict(item) for item in days]


def cancel(job_id: str) -> Call:
    # Not sent again after a connection lost mid-request: the job may be cancelled already,
    # and the client reads it rather than asking twice (see `cancelled`).
    return Call("POST", f"{_job_path(job_id)}/cancel", replay=Replay.UNSENT)


def image(job_id: str, slot: int) -> Call:
    """GET /v1/jobs/{id}/images/{slot}: a redirect to a fresh presigned URL of the image."""
    return Call("GET", f"{_job_path(job_id)}/images/{slot}")


def fetch(url: str) -> Call:
    """GET a presigned URL: it carries its own signature, and S3 refuses a second credential."""
    return Call("GET", url, authorized=False)


def _error(response: httpx.Response) -> ImagineError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_answer(
        response.status_code,
        body,
        text="" if body is not None else response.text,
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
    )


def _json(response: httpx.Response) -> Any:
    if not response.is_success:
        raise _error(response)
    try:
        return response.json()
    except ValueError:
        raise InvalidResponse(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} with a body that is not JSON",
            status=response.status_code,
        ) from None


def job(response: httpx.Response) -> Job:
    """The job of an answer, or the error it carries."""
    replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
    return Job.from_dict(_json(response), replayed=replayed)


def page(response: httpx.Response) -> Page:
    body = _json(response)
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(jobs, list):
        raise InvalidResponse("GET /v1/jobs answered without a list of jobs")
    cursor = body.get("nextCursor")
    return Page(
        jobs=tuple(Job.from_dict(item) for item in jobs),
        next_cursor=str(cursor) if cursor is not None else None,
    )


def cancelled(job: Job, error: ImagineError) -> Job:
    """After a 409 to a cancel: the job when it is cancelled (an earlier attempt, or another
    caller, cancelled it), else the conflict itself."""
    if job.state == "cancelled":
        return job
    raise error


def redirect(response: httpx.Response, base_url: str) -> str | bytes:
    """From the image endpoint's answer: the URL it redirects to, or the image itself."""
    if response.status_code in REDIRECTS and response.headers.get("Location"):
        return str(httpx.URL(base_url).join(response.headers["Location"]))
    if response.is_success:
        return response.content
    raise _error(response)


def image_bytes(response: httpx.Response, slot: Slot | None) -> bytes:
    """An image's bytes from a presigned GET, checked against the size the job recorded."""
    if not response.is_success:
        raise _error(response)
    data = response.content
    if slot is not None and slot.size is not None and len(data) != slot.size:
        raise DownloadFailed(
            f"image {slot.slot} came with {len(data)} bytes; the job recorded {slot.size}",
            status=response.status_code,
        )
    return data


def image_source(job: Job, number: int) -> tuple[Slot, str | None]:
    """A stored slot of the job and its presigned URL, if it still has time to run."""
    slot = job.slot(number)
    if slot is None:
        raise DownloadFailed(f"job {job.id} has no image {number}")
    if not slot.stored:
        raise DownloadFailed(f"image {number} of job {job.id} is {slot.state}, not stored")
    return slot, slot.url if slot.url_usable() else None


def file_name(job: Job, slot: Slot) -> str:
    """Where `download` saves an image: `<job id>-<slot, two digits>.<its format>`."""
    return f"{job.id}-{slot.slot:02d}.{slot.extension}"


def write_file(path: Path, data: bytes) -> None:
    """Write data to path whole or not at all (a reader never sees half an image)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)
