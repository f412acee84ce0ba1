"""Promotion: verify a received image (staged upload, else the provider's hosted copy) and write
it once to its final key with its metadata."""

from __future__ import annotations

import hashlib
import logging

import httpx

from pipeline import clock
from pipeline.catalog import FORMAT_CONTENT_TYPES, get_model
from pipeline.completion import fail_slot, finish_job
from pipeline.context import Context
from pipeline.errors import ImageFetchUnavailable, ImageRejected, StorageError, UploadPending
from pipeline.imaging import ImageInfo, check_complete, inspect_image
from pipeline.models import JOB_ENDED_EARLY, Job, PromoteOutcome, Slot, SlotState
from pipeline.urls import UnsafeURL, check_outbound_url, pinned_request

log = logging.getLogger(__name__)

HEADER_BYTES = 256 * 1024
# S3 refuses an object whose user metadata (names and values) exceeds 2 KB.
S3_METADATA_LIMIT = 2048


def finalize_slot(ctx: Context, job_id: str, slot_no: int) -> PromoteOutcome:
    """A worker's promotion: the hosted copy is fetched once the upload had its time to land;
    an upload still missing before the deadline raises `UploadPending` (look again later)."""
    current = ctx.store.get_slot(job_id, slot_no)
    received_at = current.received_at if current and current.received_at else clock.now()
    waited = clock.now() - received_at
    outcome = promote_slot(
        ctx, job_id, slot_no, allow_fetch=waited >= ctx.settings.upload_wait_seconds
    )
    if outcome == PromoteOutcome.MISSING:
        job = ctx.store.get_job(job_id)
        if job is not None and clock.now() < job.deadline_at:
            raise UploadPending(
                f"the upload of slot {slot_no} has not landed",
                retry_after=ctx.settings.finalize_retry_seconds,
            )
    return outcome


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
        ctx.store.transition_slot(job_id, slot_no, [SlotState.RECEIVED], SlotState.DISCARDED)
        finish_job(ctx, job_id)
        return PromoteOutcome.DISCARDED
    staging = ctx.layout.staging(job_id, slot.task_uuid)
    head = ctx.storage.head(staging)
    if head is None:
        if not allow_fetch or not slot.image_url:
            return PromoteOutcome.MISSING
        return promote_fetched(ctx, job, slot)
    try:
        if head.size > ctx.settings.max_image_bytes:
            raise ImageRejected(
                f"the staged object has {head.size} bytes, more than {ctx.settings.max_image_bytes}"
            )
        prefix = ctx.storage.read_prefix(staging, HEADER_BYTES)
        info = verify(job, inspect_image(prefix))
        check_complete(info.format, head.size, prefix, ctx.storage.read_suffix(staging, 16))
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
    final_key = ctx.layout.final(job_id, slot_no, job.output_format)
    stored = ctx.storage.copy(
        staging,
        final_key,
        if_match=head.etag,
        content_type=FORMAT_CONTENT_TYPES[info.format],
        metadata=object_metadata(job, slot, info),
    )
    applied = ctx.store.transition_slot(
        job_id,
        slot_no,
        [SlotState.RECEIVED],
        SlotState.STORED,
        task_uuid=slot.task_uuid,
        final_key=final_key,
        width=info.width,
        height=info.height,
        size=stored.size,
        etag=stored.etag,
        stored_at=repr(clock.now()),
    )
    remove_staging(ctx, job_id, slot_no, staging)
    if not applied:
        return PromoteOutcome.NOOP
    log.info("image stored", extra={"job_id": job_id, "slot": slot_no, "key": final_key})
    finish_job(ctx, job_id)
    return PromoteOutcome.STORED


def reject(ctx: Context, job: Job, slot: Slot, exc: ImageRejected) -> PromoteOutcome:
    fail_slot(ctx, job.id, slot.slot, slot.task_uuid, "image_rejected", exc.message)
    finish_job(ctx, job.id)
    return PromoteOutcome.REJECTED


def remove_staging(ctx: Context, job_id: str, slot_no: int, key: str) -> None:
    try:
        ctx.storage.delete(key)
    except StorageError:
        log.warning(
            "staging object left for the lifecycle rule", extra={"job_id": job_id, "slot": slot_no}
        )


def promote_fetched(ctx: Context, job: Job, slot: Slot) -> PromoteOutcome:
    """Store the provider-hosted copy of an image whose upload never landed or was bad."""
    if not slot.task_uuid or not slot.image_url:
        return PromoteOutcome.MISSING
    try:
        data = fetch_image(ctx, slot.image_url)
        info = verify(job, inspect_image(data))
        check_complete(info.format, len(data), data[:16], data[-16:])
    except ImageRejected as exc:
        return reject(ctx, job, slot, exc)
    final_key = ctx.layout.final(job.id, slot.slot, job.output_format)
    stored = ctx.storage.put(
        final_key,
        data,
        content_type=FORMAT_CONTENT_TYPES[info.format],
        metadata=object_metadata(job, slot, info),
    )
    applied = ctx.store.transition_slot(
        job.id,
        slot.slot,
        [SlotState.RECEIVED],
        SlotState.STORED,
        task_uuid=slot.task_uuid,
        final_key=final_key,
        width=info.width,
        height=info.height,
        size=stored.size,
        etag=stored.etag,
        stored_at=repr(clock.now()),
    )
    remove_staging(ctx, job.id, slot.slot, ctx.layout.staging(job.id, slot.task_uuid))
    if not applied:
        return PromoteOutcome.NOOP
    finish_job(ctx, job.id)
    return PromoteOutcome.STORED


def verify(job: Job, info: ImageInfo) -> ImageInfo:
    if info.format != job.output_format:
        raise ImageRejected(f"asked for {job.output_format}, got {info.format}")
    spec = get_model(job.model)
    references = len((job.params.get("inputs") or {}).get("referenceImages") or [])
    expected = spec.expected_sizes(
        job.params.get("width"), job.params.get("height"), job.params.get("resolution"), references
    )
    if (info.width, info.height) not in expected:
        raise ImageRejected(
            f"the image is {info.width}x{info.height}, expected one of "
            f"{', '.join(f'{w}x{h}' for w, h in sorted(expected))}"
        )
    return info


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
