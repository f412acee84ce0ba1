"""The OpenAPI document of the jobs API."""

from __future__ import annotations

from typing import Any

from pipeline.catalog import CATALOG
from pipeline.models import JOB_STATES, SLOT_STATES

ERROR = {
    "type": "object",
    "required": ["code", "status", "message", "errors"],
    "properties": {
        "code": {"type": "string"},
        "status": {"type": "integer"},
        "message": {"type": "string"},
        "errors": {"type": "object"},
    },
}
JOB_REQUEST = {
    "type": "object",
    "required": ["positivePrompt"],
    "additionalProperties": False,
    "properties": {
        "taskType": {"type": "string", "enum": ["imageInference"]},
        "taskUUID": {
            "type": "string",
            "format": "uuid",
            "description": "Kept as clientTaskUUID; never sent to the provider.",
        },
        "model": {
            "type": "string",
            "enum": list(CATALOG),
            "description": "Defaults to RUNWARE_MODEL; RUNWARE_ALLOWED_MODELS may allow fewer.",
        },
        "fallbackModel": {
            "type": "string",
            "enum": list(CATALOG),
            "description": (
                "Used for images not sent yet while `model` is paused or refused by the "
                "provider; must differ from `model` and accept the same request."
            ),
        },
        "positivePrompt": {"type": "string", "minLength": 1},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "resolution": {"type": "string", "enum": ["1K", "2K"]},
        "numberResults": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1},
        "outputFormat": {"type": "string", "enum": ["JPG", "PNG", "WEBP"], "default": "JPG"},
        "outputQuality": {"type": "integer", "minimum": 20, "maximum": 99},
        "inputs": {
            "type": "object",
            "properties": {"referenceImages": {"type": "array", "items": {"type": "string"}}},
        },
        "safety": {
            "type": "object",
            "properties": {"checkContent": {"type": "boolean"}, "mode": {"type": "string"}},
        },
        "idempotencyKey": {"type": "string", "maxLength": 255},
        "callbackURL": {"type": "string", "format": "uri"},
        "metadata": {
            "type": "object",
            "maxProperties": 10,
            "additionalProperties": {"type": "string", "maxLength": 256},
        },
        "deadlineSeconds": {"type": "integer", "minimum": 30, "maximum": 86400},
    },
}
SLOT = {
    "type": "object",
    "properties": {
        "slot": {"type": "integer"},
        "state": {"type": "string", "enum": list(SLOT_STATES)},
        "model": {
            "type": ["string", "null"],
            "description": "The model this image's task was sent on.",
        },
        "attempt": {"type": "integer"},
        "taskUUID": {"type": ["string", "null"]},
        "finalKey": {"type": ["string", "null"]},
        "imageUUID": {"type": ["string", "null"]},
        "seed": {"type": ["integer", "null"]},
        "cost": {"type": ["number", "null"]},
        "width": {"type": ["integer", "null"]},
        "height": {"type": ["integer", "null"]},
        "error": {"type": ["object", "null"]},
    },
}
JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "tenant": {"type": "string"},
        "state": {"type": "string", "enum": list(JOB_STATES)},
        "model": {"type": "string"},
        "fallbackModel": {"type": ["string", "null"]},
        "numberResults": {"type": "integer"},
        "outputFormat": {"type": "string"},
        "createdAt": {"type": "string"},
        "updatedAt": {"type": "string"},
        "deadlineAt": {"type": "string"},
        "reason": {"type": ["string", "null"]},
        "manifestKey": {"type": ["string", "null"]},
        "cost": {"type": ["number", "null"]},
        "slots": {"type": "array", "items": {"$ref": "#/components/schemas/Slot"}},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _job(status: int, description: str) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
        }
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "imagine-pipeline jobs API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR, "JobRequest": JOB_REQUEST, "Job": JOB, "Slot": SLOT},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Create a job",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/JobRequest"}
                            }
                        },
                    },
                    "responses": {
                        **_job(202, "created"),
                        **_job(200, "idempotent replay"),
                        **_errors(401, 409, 413, 415, 422),
                    },
                },
                "get": {
                    "summary": "List the tenant's jobs, newest first",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {"200": {"description": "a page of jobs"}, **_errors(401, 422)},
                },
            },
            "/v1/jobs/{jobId}": {
                "get": {
                    "summary": "Get a job",
                    "parameters": [
                        {
                            "name": "jobId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {**_job(200, "the job"), **_errors(401, 404)},
                }
            },
            "/v1/jobs/{jobId}/cancel": {
                "post": {
                    "summary": "Cancel a job",
                    "parameters": [
                        {
                            "name": "jobId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {**_job(200, "the cancelled job"), **_errors(401, 404, 409)},
                }
            },
        },
    }
