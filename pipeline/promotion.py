"""Promotion: verify a received image (staged upload, else the provider's hosted copy) and write
it once to its final key with its metadata."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline import clock, metrics, tracing
from pipeline.catalog import FORMAT_CONTENT_TYPES, get_model
from pipeline.completion import fail_slot, finish_job
from pipeline.context import Context
from pipeline.errors import (
    ImageFetchUnavailable,
    ImageRejected,
    ProviderError,
    UploadPending,
)
from pipeline.imaging import ImageInfo, check_complete, inspect_image
from pipeline.interfaces import ObjectHead
from pipeline.models import JOB_ENDED_EARLY, Job, PromoteOutcome, Slot, SlotState
from pipeline.urls import UnsafeURL, check_outbound_url, pinned_request

log = logging.getLogger(__name__)

HEADER_BYTES = 256 * 1024
# S3 refuses an object whose user metadata (names and values) exceeds 2 KB.
S3_METADATA_LIMIT = 2048


def finalize_slot(ctx: Context, job_id: str, slot_no: int) -> PromoteOutcome:
    """A worker's promotion: the hosted copy is fetched once the upload had its time to land;
    an upload still missing before then raises `UploadPending` (look again later). Past
    UPLOAD_WAIT_SECONDS with no imageURL, one getResponse poll decides: an imageURL is fetched,
    nothing ends the slot `upload_missing` (its cost kept: it was charged)."""
    current = ctx.store.get_slot(job_id, slot_no)
    received_at = current.received_at if current and current.received_at else clock.now()
    overdue = clock.now() - received_at >= ctx.settings.upload_wait_seconds
    outcome = promote_slot(ctx, job_id, slot_no, allow_fetch=overdue)
    if outcome == PromoteOutcome.NOOP:
        # Stored inline while the job's end (its manifest) was not: end it now.
        finish_job(ctx, job_id)
    if outcome != PromoteOutcome.MISSING:
        return outcome
    if overdue:
        return settle_missing_upload(ctx, job_id, slot_no)
    job = ctx.store.get_job(job_id)
    if job is not None and clock.now() < job.deadline_at:
        raise UploadPending(
            f"the upload of slot {slot_no} has not landed",
            retry_after=ctx.settings.finalize_retry_seconds,
        )
    return outcome


def settle_missing_upload(ctx: Context, job_id: str, slot_no: int) -> PromoteOutcome:
    """The upload never landed and the result carried no imageURL: ask getResponse once."""
    slot = ctx.store.get_slot(job_id, slot_no)
    if slot is None or slot.state != SlotState.RECEIVED or not slot.task_uuid:
        return PromoteOutcome.NOOP
    image_url = polled_image_url(ctx, job_id, slot)
    if image_url:
        ctx.store.transition_slot(
            job_id,
            slot_no,
            [SlotState.RECEIVED],
            SlotState.RECEIVED,
            task_uuid=slot.task_uuid,
            image_url=image_url,
        )
        return promote_slot(ctx, job_id, slot_no, allow_fetch=True)
    cost = f"{slot.cost} USD" if slot.cost is not None else "an unreported amount"
    message = (
        f"the upload never landed within UPLOAD_WAIT_SECONDS "
        f"({ctx.settings.upload_wait_seconds} s) and neither the result nor getResponse "
        f"carried an imageURL; the image was charged ({cost})"
    )
    if fail_slot(ctx, job_id, slot_no, slot.task_uuid, "upload_missing", message):
        owner = ctx.store.get_job(job_id)  # a rare path: read for the tenant the charge is of
        metrics.image_charged(owner.tenant if owner else "", slot.cost)
        log.warning(
            "slot failed: upload missing, no imageURL",
            extra={"job_id": job_id, "slot": slot_no, "task_uuid": slot.task_uuid},
        )
    finish_job(ctx, job_id)
    return PromoteOutcome.UPLOAD_MISSING


def polled_image_url(ctx: Context, job_id: str, slot: Slot) -> str | None:
    """The imageURL getResponse reports for the slot's task, if any. A transient failure of
    the poll raises (the worker retries); a permanent one counts as nothing better."""
    if not slot.task_uuid:
        return None
    try:
        results = ctx.runware().get_response(slot.task_uuid)
    except ProviderError as exc:
        if exc.retryable:
            raise
        log.warning(
            "getResponse refused while looking for an imageURL",
            extra={"job_id": job_id, "slot": slot.slot, "error": exc.message},
        )
        return None
    return next((result.image_url for result in results if result.ok and result.image_url), None)


@tracing.job_span("imagine.store", job_id="job_id", slot="slot_no")
def promote_slot(
    ctx: Context, job_id: str, slot_no: int, *, allow_fetch: bool = False
) -> PromoteOutcome:
    """Verify a received image and write it to its final key. Raises `StorageError` when S3
    fails."""
    job = ctx.store.get_job(job_id)
    slot = job.slot(slot_no) if job else None
    if job is None or slot is None or slot.state != SlotState.RECEIVED or not slot.task_uuid:
        return PromoteOutcome.NOOP
    if job.state in JOB_ENDED_EARLY:
        if ctx.store.transition_slot(job_id, slot_no, [SlotState.RECEIVED], SlotState.DISCARDED):
            metrics.image_charged(job.tenant, slot.cost)
        finish_job(ctx, job_id)
        return PromoteOutcome.DISCARDED
    tracing.annotate(tenant=job.tenant, task_uuid=slot.task_uuid)
    staging = ctx.layout.staging(job_id, slot.task_uuid)
    # One ranged GET is the head and the header bytes; a small image is read whole by it.
    start = ctx.storage.read_start(staging, HEADER_BYTES)
    if start is None:
        if not allow_fetch or not slot.image_url:
            return PromoteOutcome.MISSING
        return promote_fetched(ctx, job, slot)
    head, prefix = start
    try:
        if head.size > ctx.settings.max_image_bytes:
            raise ImageRejected(
                f"the staged object has {head.size} bytes, more than {ctx.settings.max_image_bytes}"
            )
        info = inspect_image(prefix)
        suffix = prefix[-16:] if head.size <= len(prefix) else ctx.storage.read_suffix(staging, 16)
        check_complete(info.format, head.size, prefix, suffix)
        checked = examine(ctx, job, info, slot)
    except ImageRejected as exc:
        if slot.image_url:
            # A bad upload is not the image: the provider's hosted copy may still be good.
            if not allow_fetch:
                log.warning(
                    "staged object rejected; a worker will fetch imageURL",
                    extra={"job_id": job_id, "slot": slot_no, "error": exc.message},
                )
                return PromoteOutcome.MISSING
            return promote_fetched(ctx, job, slot)
        return reject(ctx, job, slot, exc)
    # The extension is the image's real format: a JPG is never stored under .png.
    final_key = ctx.layout.final(job_id, slot_no, info.format)
    stored = ctx.storage.copy(
        staging,
        final_key,
        if_match=head.etag,
        content_type=FORMAT_CONTENT_TYPES[info.format],
        metadata=object_metadata(job, slot, info),
        size=head.size,
    )
    return record_stored(ctx, job, slot, final_key, stored, checked)


def record_stored(
    ctx: Context, job: Job, slot: Slot, final_key: str, stored: ObjectHead, checked: Examined
) -> PromoteOutcome:
    """The final object is written (staged copy or fetched one): move the slot to stored and
    end the job if it is done (its end drops the staging objects)."""
    applied = ctx.store.transition_slot(
        job.id,
        slot.slot,
        [SlotState.RECEIVED],
        SlotState.STORED,
        task_uuid=slot.task_uuid,
        final_key=final_key,
        size=stored.size,
        etag=stored.etag,
        stored_at=repr(clock.now()),
        **checked.fields(),
    )
    if not applied:
        return PromoteOutcome.NOOP
    metrics.image_stored(job.tenant, slot.cost, slot.received_at, clock.now())
    metrics.image_mismatched(checked.size_mismatch, checked.format_mismatch)
    stored_image(ctx, job, slot.slot, final_key, checked)
    return PromoteOutcome.STORED


def stored_image(ctx: Context, job: Job, slot_no: int, key: str, checked: Examined) -> None:
    """Count a stored image that differs from the request, then end the job if it is done."""
    if checked.size_mismatch:
        ctx.store.count_mismatch("size")
    if checked.format_mismatch:
        ctx.store.count_mismatch("format")
    log.info(
        "image stored",
        extra={
            "job_id": job.id,
            "slot": slot_no,
            "key": key,
            "size_mismatch": checked.size_mismatch,
            "format_mismatch": checked.format_mismatch,
        },
    )
    finish_job(ctx, job.id)


def reject(ctx: Context, job: Job, slot: Slot, exc: ImageRejected) -> PromoteOutcome:
    if fail_slot(ctx, job.id, slot.slot, slot.task_uuid, "image_rejected", exc.message):
        metrics.image_charged(job.tenant, slot.cost)  # received, so paid for
    finish_job(ctx, job.id)
    return PromoteOutcome.REJECTED


def promote_fetched(ctx: Context, job: Job, slot: Slot) -> PromoteOutcome:
    """Store the provider-hosted copy of an image whose upload never landed or was bad."""
    if not slot.task_uuid or not slot.image_url:
        return PromoteOutcome.MISSING
    try:
        data = fetch_image(ctx, slot.image_url)
        info = inspect_image(data)
        check_complete(info.format, len(data), data[:16], data[-16:])
        checked = examine(ctx, job, info, slot)
    except ImageRejected as exc:
        return reject(ctx, job, slot, exc)
    final_key = ctx.layout.final(job.id, slot.slot, info.format)
    stored = ctx.storage.put(
        final_key,
        data,
        content_type=FORMAT_CONTENT_TYPES[info.format],
        metadata=object_metadata(job, slot, info),
    )
    return record_stored(ctx, job, slot, final_key, stored, checked)


@dataclass(frozen=True)
class Examined:
    """A complete image of an allowed format, set against what the job asked for."""

    info: ImageInfo
    requested_width: int | None  # None when the request allowed several sizes (an edit)
    requested_height: int | None
    requested_format: str
    size_mismatch: bool
    format_mismatch: bool

    def fields(self) -> dict[str, Any]:
        """What the slot records: the actual size and format beside the requested ones."""
        return {
            "width": self.info.width,
            "height": self.info.height,
            "format": self.info.format,
            "requested_width": self.requested_width,
            "requested_height": self.requested_height,
            "requested_format": self.requested_format,
            "size_mismatch": self.size_mismatch,
            "format_mismatch": self.format_mismatch,
        }


def examine(ctx: Context, job: Job, info: ImageInfo, slot: Slot) -> Examined:
    """Compare an image with the request, by the rules of the model that made it. A paid image
    of another size or format is kept and flagged; only SIZE_MISMATCH_FAILS makes a mismatch
    refuse it (`ImageRejected`)."""
    spec = get_model(slot.model or job.model)
    references = len((job.params.get("inputs") or {}).get("referenceImages") or [])
    expected = spec.expected_sizes(
        job.params.get("width"), job.params.get("height"), job.params.get("resolution"), references
    )
    requested = next(iter(expected)) if len(expected) == 1 else (None, None)
    checked = Examined(
        info=info,
        requested_width=requested[0],
        requested_height=requested[1],
        requested_format=job.output_format,
        size_mismatch=(info.width, info.height) not in expected,
        format_mismatch=info.format != job.output_format,
    )
    if ctx.settings.size_mismatch_fails:
        refuse_mismatch(checked, expected)
    return checked


def refuse_mismatch(checked: Examined, expected: frozenset[tuple[int, int]]) -> None:
    info = checked.info
    if checked.format_mismatch:
        raise ImageRejected(f"asked for {checked.requested_format}, got {info.format}")
    if checked.size_mismatch:
        raise ImageRejected(
            f"the image is {info.width}x{info.height}, expected one of "
            f"{', '.join(f'{w}x{h}' for w, h in sorted(expected))}"
        )


def fetch_image(ctx: Context, url: str) -> bytes:
    """Download the provider-hosted copy of an image, within the allow-list and size cap,
    from the address that was checked."""
    try:
        checked = check_outbound_url(
            url,
            allowed_hosts=ctx.settings.runware_image_hosts,
            allow_private=ctx.settings.allow_private_urls,
        )
    except UnsafeURL as exc:
        raise ImageRejected(f"imageURL refused: {exc}") from None
    try:
        response = ctx.http.send(pinned_request(ctx.http, "GET", checked), stream=True)
        try:
            return _read_image(ctx, response)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        raise ImageFetchUnavailable(f"imageURL fetch failed: {type(exc).__name__}") from None


def _read_image(ctx: Context, response: httpx.Response) -> bytes:
    if response.status_code >= 500 or response.status_code == 429:
        raise ImageFetchUnavailable(f"imageURL answered {response.status_code}")
    if response.status_code != 200:
        raise ImageRejected(f"imageURL answered {response.status_code}")
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > ctx.settings.max_image_bytes:
            raise ImageRejected("imageURL is larger than the size cap")
        chunks.append(chunk)
    return b"".join(chunks)


def metadata_value(value: str | None, limit: int) -> str:
    """A value S3 accepts in object metadata: printable ASCII only (no CR or LF), bounded."""
    return "".join(char if 32 <= ord(char) < 127 else "?" for char in (value or ""))[:limit]


def object_metadata(job: Job, slot: Slot, info: ImageInfo) -> dict[str, str]:
    prompt = str(job.params.get("positivePrompt", ""))
    metadata = {
        "imagine-job-id": job.id,
        "imagine-slot": str(slot.slot),
        "imagine-tenant": job.tenant,
        "imagine-model": job.model,
        "imagine-task-uuid": slot.task_uuid or "",
        "imagine-image-uuid": metadata_value(slot.image_uuid, 128),
        "imagine-prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "imagine-width": str(info.width),
        "imagine-height": str(info.height),
    }
    if slot.seed is not None:
        metadata["imagine-seed"] = metadata_value(str(slot.seed), 32)
    used = sum(len(key) + len(value) for key, value in metadata.items())
    for key, value in job.metadata.items():
        name, text = f"user-{key.lower()}", metadata_value(value, 256)
        # S3 refuses the whole object past its metadata limit: a paid image is stored
        # without the pairs that do not fit rather than not at all.
        if used + len(name) + len(text) > S3_METADATA_LIMIT:
            log.warning(
                "object metadata over S3's limit: user pair left out",
                extra={"job_id": job.id, "slot": slot.slot, "key": name},
            )
            continue
        metadata[name] = text
        used += len(name) + len(text)
    return metadata
