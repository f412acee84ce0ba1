"""Schemas of the jobs API: its query and header parameters, its answers and its one error shape.
The job request's schema is the pipeline's own (`pipeline.schemas.JobRequestSchema`), which the
use case loads; the document shows that same class."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

from pipeline import clock
from pipeline.models import JOB_STATES, SLOT_STATES
from pipeline.schemas import IDEMPOTENCY_KEY
from pipeline.stats import MAX_DAYS, parse_since


class _Exact(Schema):
    """A schema whose document says no other field appears (`additionalProperties: false`)."""

    class Meta:
        unknown = RAISE


def _time(description: str | None = None, **options: Any) -> fields.String:
    """An ISO 8601 UTC time, as `pipeline.clock.iso` writes it."""
    metadata = {"format": "date-time"} | ({"description": description} if description else {})
    return fields.String(metadata=metadata, **options)


def _nullable(
    field: type[fields.Field[Any]], description: str, *, format: str | None = None
) -> fields.Field[Any]:
    """A field every answer carries, null when there is nothing to say."""
    metadata = {"description": description} | ({"format": format} if format else {})
    return field(required=True, allow_none=True, metadata=metadata)


# --------------------------------------------------------------------------- parameters
def _readable_since(text: str) -> None:
    try:
        parse_since(text, clock.now())
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class ListQuerySchema(_Exact):
    state = fields.String(
        validate=validate.OneOf(JOB_STATES),
        metadata={"description": "Only jobs in this state."},
    )
    cursor = fields.Float(
        metadata={"description": "The `nextCursor` of the previous page."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    since = fields.String(
        validate=_readable_since,
        metadata={
            "description": (
                "Only jobs created at this time or later: a duration back from now (`30m`, "
                "`1h`, `2d`, `1h30m`; units s, m, h, d, w) or an ISO 8601 time (UTC unless it "
                "names its offset). Pages with `cursor` as usual."
            ),
        },
    )

    @post_load
    def window(self, query: dict[str, Any], **_: Any) -> dict[str, Any]:
        """`since` as the Unix time the window starts at."""
        if "since" in query:
            query["since"] = parse_since(query["since"], clock.now())
        return query


class StatsQuerySchema(_Exact):
    days = fields.Integer(
        load_default=7,
        validate=validate.Range(min=1, max=MAX_DAYS),
        metadata={"description": "How many UTC days, today first."},
    )


class IdempotencyHeaderSchema(Schema):
    """Documents the header; the view checks it against the same pattern."""

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=[validate.Length(min=1, max=255), validate.Regexp(IDEMPOTENCY_KEY)],
        metadata={
            "description": (
                "Makes a retried request return the job the first one made (200 with "
                "`Idempotent-Replayed: true`); the same key with another body is a 409. Scoped "
                "to the tenant. Same as the body's `idempotencyKey`."
            )
        },
    )


# --------------------------------------------------------------------------- answers
class ErrorSchema(_Exact):
    """Every error the service answers, whatever its status."""

    code = fields.String(
        required=True,
        metadata={"description": "Machine-readable, e.g. `validation_failed`, `not_found`."},
    )
    status = fields.Integer(required=True, metadata={"description": "The HTTP status."})
    message = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        required=True,
        metadata={"description": "Messages by field name; empty when the error names none."},
    )


class RequestedSchema(_Exact):
    width = _nullable(fields.Integer, "Null when the request allowed several sizes (an edit).")
    height = _nullable(fields.Integer, "Null when the request allowed several sizes (an edit).")
    format = fields.String(required=True)


class SlotErrorSchema(_Exact):
    code = fields.String(required=True)
    message = _nullable(fields.String, "What the provider or the pipeline said.")


class SlotAttemptSchema(_Exact):
    """A retired attempt of an image, as the step that gave the image a new one recorded it."""

    attempt = fields.Integer(required=True)
    taskUUID = fields.String(required=True, metadata={"description": "The retired task."})
    state = fields.String(
        required=True,
        validate=validate.OneOf(SLOT_STATES),
        metadata={"description": "The slot's state when the attempt was retired."},
    )
    model = _nullable(fields.String, "The model the task was sent on.")
    code = _nullable(fields.String, "Why the attempt ended: the provider's or the pipeline's code.")
    message = _nullable(fields.String, "What was said, cut at 200 characters.")
    submittedAt = _time("When Runware accepted the task.", required=True, allow_none=True)
    receivedAt = _time("When its result arrived.", required=True, allow_none=True)
    endedAt = _time("When the attempt ended.", required=True, allow_none=True)


class SlotViewSchema(_Exact):
    """One requested image (slot 0..numberResults-1) as `pipeline.documents.slot_view` shows it."""

    slot = fields.Integer(required=True)
    state = fields.String(required=True, validate=validate.OneOf(SLOT_STATES))
    model = _nullable(fields.String, "The model this image's task was sent on.")
    attempt = fields.Integer(required=True)
    taskUUID = _nullable(fields.String, "The current attempt's Runware task.")
    finalKey = _nullable(fields.String, "Where the image lands in the bucket.")
    imageUUID = _nullable(fields.String, "Runware's id of the image.")
    seed = _nullable(fields.Integer, "The seed Runware reported.")
    cost = _nullable(fields.Float, "What Runware charged for this image, in USD.")
    width = _nullable(fields.Integer, "The stored image's width.")
    height = _nullable(fields.Integer, "The stored image's height.")
    format = _nullable(fields.String, "The stored image's format (JPG, PNG or WEBP).")
    requested = fields.Nested(
        RequestedSchema,
        required=True,
        allow_none=True,
        metadata={"description": "What the job asked of this image, once it is stored."},
    )
    sizeMismatch = _nullable(fields.Boolean, "The stored image has another size than asked.")
    formatMismatch = _nullable(fields.Boolean, "The stored image has another format than asked.")
    bytes = _nullable(fields.Integer, "The stored object's size.")
    etag = _nullable(fields.String, "The stored object's ETag.")
    error = fields.Nested(
        SlotErrorSchema,
        required=True,
        allow_none=True,
        metadata={"description": "Why the image failed; null unless it did."},
    )
    previousTaskUUIDs = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The taskUUIDs of earlier attempts, oldest first."},
    )
    submittedAt = _time("When Runware accepted the current task.", required=True, allow_none=True)
    receivedAt = _time("When the current task's result arrived.", required=True, allow_none=True)
    storedAt = _time(
        "When the image was stored under its final key.", required=True, allow_none=True
    )
    updatedAt = _time("The slot's last change.", required=True, allow_none=True)
    history = fields.List(
        fields.Nested(SlotAttemptSchema),
        required=True,
        metadata={
            "description": "Each earlier attempt, oldest first; the current one is the slot."
        },
    )
    url = _nullable(
        fields.String,
        "A presigned GET URL of the stored image, for callers without S3 credentials; null "
        "until it is stored or when the deployment turns URLs off (RESULT_URL_SECONDS=0).",
        format="uri",
    )
    urlExpiresAt = _time("When `url` stops working.", required=True, allow_none=True)


class CallbackAttemptSchema(_Exact):
    """One delivery attempt of the job's signed callback."""

    at = _time("When the attempt was made.", required=True)
    webhookId = fields.String(
        required=True, metadata={"description": "The event's id: the same on every retry."}
    )
    outcome = fields.String(
        required=True, metadata={"description": "sent, rejected, retrying, gave_up, ..."}
    )
    status = _nullable(fields.Integer, "The receiver's HTTP status; null when it did not answer.")
    error = _nullable(fields.String, "What went wrong, when something did.")
    durationMs = fields.Float(required=True)
    nextAttemptAt = _time(
        "When the next attempt is due, if one is.", required=True, allow_none=True
    )


class JobViewSchema(_Exact):
    """A job as `pipeline.documents.job_view` shows it."""

    id = fields.String(required=True, metadata={"format": "uuid"})
    tenant = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(JOB_STATES))
    model = fields.String(required=True)
    fallbackModel = _nullable(fields.String, "Used while `model` is paused or refused.")
    numberResults = fields.Integer(required=True)
    outputFormat = fields.String(required=True)
    createdAt = _time(required=True)
    updatedAt = _time(required=True)
    deadlineAt = _time("When unfinished images fail with reason `deadline`.", required=True)
    endedAt = _time("When the job reached its terminal state.", required=True, allow_none=True)
    reason = _nullable(fields.String, "Why the job ended or waits, when it is not plain.")
    clientTaskUUID = _nullable(fields.String, "The request's `taskUUID`, kept as given.")
    idempotencyKey = _nullable(fields.String, "The header's or the body's key.")
    callbackURL = _nullable(fields.String, "Where the signed end-of-job callback goes.")
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    manifestKey = _nullable(fields.String, "The manifest's key, once it is written.")
    manifestURL = _nullable(
        fields.String,
        "A presigned GET URL of the manifest, once it is written (see `url`).",
        format="uri",
    )
    manifestURLExpiresAt = _time(
        "When `manifestURL` stops working.", required=True, allow_none=True
    )
    cost = _nullable(fields.Float, "What Runware charged for the job's images, in USD.")
    slots = fields.List(fields.Nested(SlotViewSchema), required=True)
    callbacks = fields.List(
        fields.Nested(CallbackAttemptSchema),
        required=True,
        metadata={"description": "Each delivery attempt of the callback, oldest first."},
    )


class JobPageSchema(_Exact):
    jobs = fields.List(fields.Nested(JobViewSchema), required=True)
    nextCursor = _nullable(fields.String, "Pass as `cursor` for the next page; null on the last.")


class EndedCountsSchema(_Exact):
    """Jobs that ended in the day, by the state they ended in."""

    succeeded = fields.Integer(required=True)
    partially_succeeded = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    cancelled = fields.Integer(required=True)
    timed_out = fields.Integer(required=True)


class ReservedSchema(_Exact):
    images = fields.Integer(required=True)
    spendUsd = fields.Float(required=True)


class DayStatsSchema(_Exact):
    """One tenant's counters of one UTC day, each counted by the step that made the change."""

    day = fields.String(required=True, metadata={"format": "date"})
    tenant = fields.String(required=True)
    created = fields.Integer(required=True, metadata={"description": "Jobs created."})
    imagesRequested = fields.Integer(
        required=True, metadata={"description": "Images the jobs created asked for."}
    )
    ended = fields.Nested(
        EndedCountsSchema,
        required=True,
        metadata={
            "description": (
                "Jobs that ended this day, by end state (a job an operator reopens counts "
                "again when it ends again)."
            )
        },
    )
    imagesStored = fields.Integer(required=True)
    imagesFailed = fields.Integer(
        required=True,
        metadata={"description": "Images that ended failed or dead (cancelled and deadline too)."},
    )
    spendUsd = fields.Float(
        required=True, metadata={"description": "What Runware reported charging, in USD."}
    )
    reserved = fields.Nested(
        ReservedSchema,
        required=True,
        allow_none=True,
        metadata={
            "description": (
                "What the daily caps hold for the day (estimated at creation); null when no cap "
                "counted it."
            )
        },
    )


class StatsSchema(_Exact):
    days = fields.List(
        fields.Nested(DayStatsSchema),
        required=True,
        metadata={"description": "The tenant's days, today first."},
    )
