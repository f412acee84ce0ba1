"""Schemas of the jobs API's query parameters (the job body schema lives in the pipeline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from pipeline.errors import RequestInvalid
from pipeline.models import JOB_STATES


class ListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    state = fields.String(load_default=None, validate=validate.OneOf(JOB_STATES))
    cursor = fields.Float(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


def load_or_422(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = schema.load(dict(data))
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise RequestInvalid("the query is invalid", messages) from None
    return result
