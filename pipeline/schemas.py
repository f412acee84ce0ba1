"""Marshmallow schemas: the job request we accept, and the Runware payloads we read."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from pipeline.catalog import CATALOG, get_model

PIPELINE_OWNED_FIELDS = (
    "deliveryMethod",
    "webhookURL",
    "uploadEndpoint",
    "outputType",
    "ttl",
    "includeCost",
)
METADATA_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
METADATA_MAX_PAIRS = 10
METADATA_MAX_VALUE = 256
# S3 caps an object's user metadata at 2 KB; the pipeline's own pairs take under 700 bytes.
METADATA_MAX_BYTES = 1024
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Runware reports one image per task; a body with more items than this is not a result.
MAX_PROVIDER_ITEMS = 64
MAX_SEED = 2**64


def _ascii_printable(value: str) -> bool:
    return all(32 <= ord(char) < 127 for char in value)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class InputsSchema(_Strict):
    referenceImages = fields.List(fields.String(validate=validate.Length(min=1)), load_default=None)


class SafetySchema(_Strict):
    checkContent = fields.Boolean(load_default=None)
    mode = fields.String(load_default=None)


class JobRequestSchema(_Strict):
    """A job request: Runware's own parameter names plus the pipeline's fields."""

    taskType = fields.String(
        validate=validate.Equal("imageInference", error="must be imageInference")
    )
    taskUUID = fields.UUID(data_key="taskUUID", load_default=None)
    model = fields.String(load_default=None)
    fallbackModel = fields.String(load_default=None)
    positivePrompt = fields.String(required=True, validate=validate.Length(min=1, max=10000))
    width = fields.Integer(strict=True, load_default=None)
    height = fields.Integer(strict=True, load_default=None)
    resolution = fields.String(load_default=None)
    numberResults = fields.Integer(strict=True, load_default=1)
    outputFormat = fields.String(load_default=None)
    outputQuality = fields.Integer(strict=True, load_default=None)
    inputs = fields.Nested(InputsSchema, load_default=None)
    safety = fields.Nested(SafetySchema, load_default=None)
    idempotencyKey = fields.String(
        validate=validate.Regexp(
            IDEMPOTENCY_KEY, error="must be 1-255 printable ASCII characters without spaces"
        ),
        load_default=None,
    )
    callbackURL = fields.URL(schemes={"http", "https"}, require_tld=False, load_default=None)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None)
    deadlineSeconds = fields.Integer(
        strict=True, validate=validate.Range(min=30, max=86400), load_default=None
    )

    def __init__(
        self, default_model: str, allowed_models: Collection[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.default_model = default_model
        self.allowed_models = tuple(CATALOG) if allowed_models is None else tuple(allowed_models)

    @pre_load
    def upper_case_format(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("outputFormat"), str):
            data = {**data, "outputFormat": data["outputFormat"].upper()}
        return data

    def model_problem(self, air: str) -> str | None:
        """Why a job may not name this model, or None: it must be in the catalog and allowed."""
        if air not in CATALOG:
            return f"unknown model {air!r}; known: {', '.join(sorted(CATALOG))}"
        if air not in self.allowed_models:
            return (
                f"model {air!r} is not allowed on this deployment; "
                f"allowed: {', '.join(self.allowed_models)}"
            )
        return None

    @validates_schema
    def check_model_rules(self, data: dict[str, Any], **_: Any) -> None:
        air = data.get("model") or self.default_model
        problem = self.model_problem(air)
        if problem:
            raise ValidationError({"model": [problem]})
        errors = get_model(air).validate(data)
        errors.update(self.fallback_errors(air, data))
        errors.update(self.metadata_errors(data))
        if errors:
            raise ValidationError(errors)

    def fallback_errors(self, air: str, data: dict[str, Any]) -> dict[str, list[str]]:
        """A fallback is allowed like the model, differs from it and accepts the same request."""
        fallback = data.get("fallbackModel")
        if fallback is None:
            return {}
        problem = self.model_problem(fallback)
        if problem is None and fallback == air:
            problem = f"must differ from the job's model {air}"
        if problem is None:
            refused = get_model(fallback).validate(data)
            if refused:
                details = "; ".join(f"{name}: {' '.join(text)}" for name, text in refused.items())
                problem = f"{fallback} would not accept this request ({details})"
        return {"fallbackModel": [problem]} if problem else {}

    @staticmethod
    def metadata_errors(data: dict[str, Any]) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        metadata = data.get("metadata")
        if metadata is not None:
            problems = []
            if len(metadata) > METADATA_MAX_PAIRS:
                problems.append(f"at most {METADATA_MAX_PAIRS} pairs")
            for key, value in metadata.items():
                if not METADATA_KEY.fullmatch(key):
                    problems.append(f"key {key!r} must be 1-64 ASCII letters, digits, '-' or '_'")
                if len(value) > METADATA_MAX_VALUE or not _ascii_printable(value):
                    problems.append(
                        f"value of {key!r} must be printable ASCII, "
                        f"at most {METADATA_MAX_VALUE} characters"
                    )
            size = sum(len(f"user-{key}") + len(value) for key, value in metadata.items())
            if size > METADATA_MAX_BYTES:
                problems.append(
                    f"keys and values take {size} bytes with their 'user-' prefix; "
                    f"at most {METADATA_MAX_BYTES} (S3 caps object metadata at 2 KB)"
                )
            if problems:
                errors["metadata"] = problems
        return errors

    @post_load
    def normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["model"] = data.get("model") or self.default_model
        if data.get("taskUUID") is not None:
            data["taskUUID"] = str(data["taskUUID"])
        spec = get_model(data["model"])
        data["outputFormat"] = data.get("outputFormat") or spec.default_output_format
        return {key: value for key, value in data.items() if value is not None}


def _not_unicode(value: Any) -> bool:
    """True when a value holds a lone surrogate (JSON's `\\ud800` escape parses to one): it
    cannot be encoded as UTF-8, so the prompt's hash and S3 metadata would fail after payment."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    except (TypeError, ValueError):
        return False
    return False


def load_job_request(
    body: Any, default_model: str, allowed_models: Collection[str] | None = None
) -> dict[str, Any]:
    """Validate a job request; raise `ValidationError` with messages by field. `allowed_models`:
    the models the deployment serves (None: the whole catalog)."""
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["the request body must be a JSON object"]})
    garbled = {
        ("_schema" if _not_unicode(key) else key): [
            "holds text that is not valid Unicode (a lone surrogate)"
        ]
        for key, value in body.items()
        if _not_unicode(key) or _not_unicode(value)
    }
    if garbled:
        raise ValidationError(garbled)
    owned = {
        name: [f"{name} is set by the pipeline; remove it from the request"]
        for name in PIPELINE_OWNED_FIELDS
        if name in body
    }
    rest = {key: value for key, value in body.items() if key not in PIPELINE_OWNED_FIELDS}
    try:
        result: dict[str, Any] = JobRequestSchema(default_model, allowed_models).load(rest)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationError({**owned, **messages}) from None
    if owned:
        raise ValidationError(owned)
    return result


class ImageInferenceTaskSchema(_Strict):
    """One `imageInference` task as the pipeline sends it to Runware."""

    taskType = fields.String(required=True, validate=validate.Equal("imageInference"))
    taskUUID = fields.UUID(required=True)
    model = fields.String(required=True)
    positivePrompt = fields.String(required=True, validate=validate.Length(min=1))
    width = fields.Integer(strict=True)
    height = fields.Integer(strict=True)
    resolution = fields.String()
    outputFormat = fields.String(validate=validate.OneOf(["JPG", "PNG", "WEBP"]))
    outputQuality = fields.Integer(strict=True, validate=validate.Range(min=20, max=99))
    inputs = fields.Nested(InputsSchema)
    safety = fields.Nested(SafetySchema)
    numberResults = fields.Integer(strict=True, validate=validate.Equal(1))
    deliveryMethod = fields.String(required=True, validate=validate.Equal("async"))
    webhookURL = fields.URL(required=True, require_tld=False)
    uploadEndpoint = fields.URL(required=True, require_tld=False)
    outputType = fields.String(validate=validate.OneOf(["URL", "base64Data", "dataURI"]))
    includeCost = fields.Boolean()
    ttl = fields.Integer(strict=True, validate=validate.Range(min=60))


def check_outgoing_task(task: dict[str, Any]) -> dict[str, Any]:
    """Refuse to send a malformed task: a bug here must not reach the provider's bill."""
    errors = _OUTGOING_TASK.validate(task)
    if errors:
        raise ValueError(f"malformed Runware task: {errors}")
    return task


# --- Runware payloads: unknown provider fields are ignored, never trusted ---


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class ProviderErrorSchema(_Lenient):
    code = fields.String(load_default=None)
    message = fields.String(load_default=None)
    parameter = fields.Raw(load_default=None)
    taskType = fields.String(load_default=None)
    taskUUID = fields.String(load_default=None)
    status = fields.String(load_default=None)


class NestedErrorSchema(_Lenient):
    code = fields.String(load_default=None)
    message = fields.String(load_default=None)


class ProviderItemSchema(_Lenient):
    taskType = fields.String(load_default=None)
    taskUUID = fields.String(required=True)
    imageUUID = fields.String(load_default=None)
    imageURL = fields.String(load_default=None)
    imageBase64Data = fields.String(load_default=None)
    imageDataURI = fields.String(load_default=None)
    # Read leniently and checked in _item_result: one odd value must not refuse a paid image.
    seed = fields.Raw(load_default=None)
    cost = fields.Raw(load_default=None)
    NSFWContent = fields.Raw(load_default=None)
    status = fields.String(load_default=None)
    progress = fields.Float(load_default=None)
    error = fields.Nested(NestedErrorSchema, load_default=None)
    connectionSessionUUID = fields.String(load_default=None)


# Built once: a schema's construction deep-copies its fields, which cost more than a load
# (0.8 ms of every webhook). Loading keeps no state on the instance, so threads may share one.
_OUTGOING_TASK = ImageInferenceTaskSchema()
_PROVIDER_ITEMS = ProviderItemSchema(many=True)
_PROVIDER_ERRORS = ProviderErrorSchema(many=True)

# What ProviderItemSchema reads, by kind, for the plain-item path below.
_ITEM_FIELDS = ProviderItemSchema._declared_fields
_ITEM_STRINGS = tuple(name for name, kind in _ITEM_FIELDS.items() if type(kind) is fields.String)
_ITEM_RAW = tuple(name for name, kind in _ITEM_FIELDS.items() if type(kind) is fields.Raw)
if set(_ITEM_FIELDS) - {*_ITEM_STRINGS, *_ITEM_RAW} != {"progress", "error"}:
    raise RuntimeError("ProviderItemSchema gained a field that _plain_item does not read")


def _plain_number(value: Any) -> tuple[bool, float | None]:
    """Whether a value is null or a finite number (not a boolean), and it as a float."""
    if value is None:
        return True, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False, None
    try:
        number = float(value)
    except OverflowError:
        return False, None
    return math.isfinite(number), number


def _plain_item(item: Any) -> dict[str, Any] | None:
    """An item as ProviderItemSchema loads it, when every field it reads holds a plain value
    (a string or null, a finite number or null for progress, no nested error); None for
    anything else, which the schema itself then loads or refuses with its own messages. A
    schema load costs about 70 us, most of a replayed webhook's own parsing."""
    if not isinstance(item, dict) or not isinstance(item.get("taskUUID"), str):
        return None
    plain, progress = _plain_number(item.get("progress"))
    if not plain or item.get("error") is not None:
        return None
    loaded: dict[str, Any] = {"error": None, "progress": progress}
    for name in _ITEM_STRINGS:
        value = item.get(name)
        if value is not None and not isinstance(value, str):
            return None
        loaded[name] = value
    for name in _ITEM_RAW:
        loaded[name] = item.get(name)
    return loaded


def _load_items(data: list[Any]) -> list[dict[str, Any]]:
    plain = [_plain_item(item) for item in data]
    if all(item is not None for item in plain):
        return cast(list[dict[str, Any]], plain)
    loaded: list[dict[str, Any]] = _PROVIDER_ITEMS.load(data)
    return loaded


@dataclass(frozen=True)
class ProviderResult:
    """One image outcome reported by Runware, from a webhook, a poll or a sync answer."""

    task_uuid: str
    status: str  # "success" | "error" | "processing"
    image_uuid: str | None = None
    image_url: str | None = None
    seed: int | None = None
    cost: float | None = None
    nsfw: bool | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"


PROCESSING_STATUSES = {"processing", "pending", "queued", "scheduled", "waiting"}


def _printable(value: Any, limit: int) -> str | None:
    """Provider text as stored: printable characters only, bounded; None when empty."""
    if not isinstance(value, str):
        return None
    text = "".join(char if char.isprintable() else " " for char in value).strip()[:limit]
    return text or None


PROVIDER_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
IMAGE_UUID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _code(value: Any) -> str:
    return value if isinstance(value, str) and PROVIDER_CODE.fullmatch(value) else "providerError"


def _seed(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEED:
        return None
    return value


def _cost(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and 0 <= cost < 1_000_000 else None


def _image_url(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 2048:
        return None
    return value if all(33 <= ord(char) < 127 for char in value) else None


def _item_result(item: dict[str, Any]) -> ProviderResult | None:
    status = str(item.get("status") or "").lower()
    if item.get("taskType") == "authentication":
        return None
    if status == "error" or item.get("error"):
        error = item.get("error") or {}
        return ProviderResult(
            task_uuid=item["taskUUID"],
            status="error",
            error_code=_code(error.get("code")),
            error_message=(
                _printable(error.get("message"), 1000) or "the provider reported an error"
            ),
        )
    if status in PROCESSING_STATUSES or not item.get("imageUUID"):
        return ProviderResult(task_uuid=item["taskUUID"], status="processing")
    # The imageUUID reaches S3 metadata and logs: an odd one is kept in a safe form.
    image_uuid = item["imageUUID"]
    if not IMAGE_UUID.fullmatch(image_uuid):
        image_uuid = "".join(
            char if IMAGE_UUID.fullmatch(char) else "_" for char in image_uuid[:128]
        )
    nsfw = item.get("NSFWContent")
    return ProviderResult(
        task_uuid=item["taskUUID"],
        status="success",
        image_uuid=image_uuid,
        image_url=_image_url(item.get("imageURL")),
        seed=_seed(item.get("seed")),
        cost=_cost(item.get("cost")),
        nsfw=nsfw if isinstance(nsfw, bool) else None,
    )


def _error_result(error: dict[str, Any]) -> ProviderResult | None:
    if not error.get("taskUUID"):
        return None
    return ProviderResult(
        task_uuid=error["taskUUID"],
        status="error",
        error_code=_code(error.get("code")),
        error_message=_printable(error.get("message"), 1000) or "the provider reported an error",
    )


def untied_error_result(task_uuid: str, error: dict[str, Any]) -> ProviderResult:
    """An error entry that names no task, read as the failure of the URL's task; its code and
    message are made safe like those of any other provider error."""
    return ProviderResult(
        task_uuid=task_uuid,
        status="error",
        error_code=_code(error.get("code")),
        error_message=_printable(error.get("message"), 1000) or "the provider reported an error",
    )


def _envelope(body: Any) -> tuple[list[Any], list[Any]]:
    """The `data` and `errors` arrays of a body, whichever of the known shapes it has."""
    if isinstance(body, list):
        body = {"data": body}
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    if "data" not in body and "errors" not in body:
        body = {"data": [body]}
    data = body.get("data") or []
    errors = body.get("errors") or []
    if isinstance(data, dict):  # seen in one docs example: a single object instead of an array
        data = [data]
    if not isinstance(data, list) or not isinstance(errors, list):
        raise ValidationError("data and errors must be arrays")
    if len(data) + len(errors) > MAX_PROVIDER_ITEMS:
        raise ValidationError(
            f"at most {MAX_PROVIDER_ITEMS} items in data and errors together, "
            f"got {len(data) + len(errors)}"
        )
    return data, errors


def parse_provider_body(body: Any) -> tuple[list[ProviderResult], list[dict[str, Any]]]:
    """Read a Runware body in any known shape: wrapped `{data, errors}` or one flat item.

    Returns the image results (successes, errors tied to a task, and in-progress placeholders)
    and the raw error entries that name no task.
    """
    data, errors = _envelope(body)
    # An authentication item names a session, not a task: it carries no taskUUID.
    data = [
        item
        for item in data
        if not (isinstance(item, dict) and item.get("taskType") == "authentication")
    ]
    items = _load_items(data)
    error_items: list[dict[str, Any]] = _PROVIDER_ERRORS.load(errors) if errors else []
    results: list[ProviderResult] = []
    untied: list[dict[str, Any]] = []
    for item in items:
        parsed = _item_result(item)
        if parsed is not None:
            results.append(parsed)
    for error in error_items:
        parsed = _error_result(error)
        if parsed is None:
            untied.append(error)
        else:
            results.append(parsed)
    return results, untied
