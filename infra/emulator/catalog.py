"""The provider's rules per Grok Imagine model: sizes, limits, prices and validation.

Written from Runware's model pages and SDK, apart from the pipeline's catalog on purpose. What no
source states is assumed in one place, the `QUALITY_ASSUMED_*` values below.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

ERRORS_DOCS_URL = "https://runware.ai/docs/platform/errors"
MODEL_DOCS_URL = "https://runware.ai/docs/models/"

PRO = "xai:grok-imagine@image-pro"
IMAGE = "xai:grok-imagine@image"
QUALITY = "xai:grok-imagine@image-quality"

ASPECTS = (
    "1:1",
    "3:4",
    "4:3",
    "9:16",
    "16:9",
    "2:3",
    "3:2",
    "9:19.5",
    "19.5:9",
    "9:20",
    "20:9",
    "1:2",
    "2:1",
)
# The dimension tables of the Pro page (1K and 2K rows) and of the `@image` page (the same
# thirteen 1K pairs), one pair per aspect above, in that order.
ROW_1K = (
    (1024, 1024),
    (896, 1280),
    (1280, 896),
    (768, 1408),
    (1408, 768),
    (864, 1296),
    (1296, 864),
    (576, 1248),
    (1248, 576),
    (576, 1280),
    (1280, 576),
    (704, 1408),
    (1408, 704),
)
ROW_2K = (
    (2048, 2048),
    (1792, 2560),
    (2560, 1792),
    (1536, 2816),
    (2816, 1536),
    (1728, 2592),
    (2592, 1728),
    (1152, 2496),
    (2496, 1152),
    (1152, 2560),
    (2560, 1152),
    (1408, 2816),
    (2816, 1408),
)

# ASSUMED, the one place for what no source gives about `xai:grok-imagine@image-quality`:
# runware-sdk 1.8.0's types say `resolution` 1K or 2K and nothing more, and its model page was not
# found. Its sizes are taken to be the Pro page's 1K and 2K rows; its price $0.045 per image at
# either resolution (a reseller's price for xAI's quality model, where its `grok-imagine-image`
# price matches Runware's $0.02), plus $0.002 per input image when editing, as on both known pages.
QUALITY_ASSUMED_DIMENSIONS: dict[str, tuple[tuple[int, int], ...]] = {"1K": ROW_1K, "2K": ROW_2K}
QUALITY_ASSUMED_PRICE_PER_IMAGE = 0.045
QUALITY_ASSUMED_PRICE_PER_INPUT_IMAGE = 0.002


@dataclass(frozen=True)
class ModelRules:
    """One model's dimension table and prices, with where they come from."""

    model: str
    docs_url: str
    dimensions: dict[str, tuple[tuple[int, int], ...]]
    price_per_image: float
    price_per_input_image: float
    source: str

    @property
    def allowed_sizes(self) -> frozenset[tuple[int, int]]:
        """Every width x height pair of the table."""
        return frozenset(size for row in self.dimensions.values() for size in row)

    @property
    def default_preset(self) -> str:
        """The preset used when only reference images set the size."""
        return "1K"


MODELS: dict[str, ModelRules] = {
    PRO: ModelRules(
        PRO,
        MODEL_DOCS_URL + "xai-grok-imagine-image-pro",
        {"1K": ROW_1K, "2K": ROW_2K},
        0.07,
        0.002,
        "model page: 1K and 2K tables, $0.07 per image, +$0.002 per input image",
    ),
    IMAGE: ModelRules(
        IMAGE,
        MODEL_DOCS_URL + "xai-grok-imagine-image",
        {"1K": ROW_1K},
        0.02,
        0.002,
        "model page: thirteen 1K pairs, $0.02 per image, +$0.002 per input image",
    ),
    QUALITY: ModelRules(
        QUALITY,
        MODEL_DOCS_URL + "xai-grok-imagine-image-quality",
        QUALITY_ASSUMED_DIMENSIONS,
        QUALITY_ASSUMED_PRICE_PER_IMAGE,
        QUALITY_ASSUMED_PRICE_PER_INPUT_IMAGE,
        "runware-sdk 1.8.0 types: resolution 1K or 2K; sizes and prices ASSUMED above",
    ),
}

# The Pro model's table, under the names this module had when it served only that model.
DOCS_URL = MODELS[PRO].docs_url
DIMENSIONS = MODELS[PRO].dimensions
ALLOWED_SIZES = MODELS[PRO].allowed_sizes
DEFAULT_PRESET = "1K"

NUMBER_RESULTS = (1, 20)
OUTPUT_QUALITY = (20, 99)
DEFAULT_QUALITY = 95
MIN_TTL = 60
OUTPUT_FORMATS = ("JPG", "PNG", "WEBP")
OUTPUT_TYPES = ("URL", "base64Data", "dataURI")
DELIVERY_METHODS = ("sync", "async")
SAFETY_MODES = ("none", "fast")
RESULT_KEYS = {"URL": "imageURL", "base64Data": "imageBase64Data", "dataURI": "imageDataURI"}

INFERENCE_FIELDS = frozenset(
    {
        "taskType",
        "taskUUID",
        "model",
        "positivePrompt",
        "width",
        "height",
        "resolution",
        "inputs",
        "outputType",
        "outputFormat",
        "outputQuality",
        "deliveryMethod",
        "webhookURL",
        "uploadEndpoint",
        "includeCost",
        "numberResults",
        "ttl",
        "safety",
    }
)
INPUT_FIELDS = frozenset({"referenceImages"})
SAFETY_FIELDS = frozenset({"checkContent", "mode"})


class TaskError(Exception):
    """One task refused; `item` is its entry in the response's `errors` array."""

    def __init__(
        self, code: str, message: str, parameter: str | None = None, status: int = 400, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parameter = parameter
        self.status = status
        self.extra = extra

    def item(self, task_type: str | None, task_uuid: str | None) -> dict[str, Any]:
        """The wire shape of the error, bound to its task."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        if task_type is not None:
            body["taskType"] = task_type
        if task_uuid is not None:
            body["taskUUID"] = task_uuid
        body.update(self.extra)
        body["documentation"] = ERRORS_DOCS_URL
        return body


@dataclass(frozen=True)
class InferenceRequest:
    """A validated imageInference task, with the defaults of the model page filled in."""

    task_uuid: str
    model: str
    prompt: str
    width: int | None
    height: int | None
    preset: str
    reference_images: tuple[str, ...]
    output_type: str
    output_format: str
    output_quality: int
    delivery_method: str
    webhook_url: str | None
    upload_endpoint: str | None
    include_cost: bool
    number_results: int
    ttl: int | None
    check_content: bool

    @property
    def editing(self) -> bool:
        """Whether reference images make this an editing task."""
        return bool(self.reference_images)


def unit_cost(reference_images: int, price_per_image: float, price_per_input: float) -> float:
    """USD charged per image: the model's price, and more per input image when editing."""
    return round(price_per_image + price_per_input * reference_images, 6)


def closest_size(preset: str, aspect: float, model: str = PRO) -> tuple[int, int]:
    """The model's preset row whose width/height ratio is closest to `aspect`."""
    return min(MODELS[model].dimensions[preset], key=lambda wh: abs(wh[0] / wh[1] - aspect))


def rules_for(model: str) -> ModelRules:
    """The rules of a model of this catalog."""
    return MODELS[model]


def retired_model_error(model: str) -> TaskError:
    """What a retired model answers: `invalidModel` on `model`, the one refusal of a model id the
    real API was seen to send (Runware/ComfyUI-Runware#3); `unknownModel` is SDK-only (§14)."""
    return TaskError(
        "invalidModel",
        "Invalid value for model parameter. Model must be an string value representing a valid "
        f"AIR identifier. '{model}' is not available.",
        "model",
    )


def is_uuid(value: Any) -> bool:
    """Whether `value` is a UUID string (any version)."""
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _int_in(task: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    if name not in task or task[name] is None:
        return None
    value = task[name]
    code = "invalid" + name[0].upper() + name[1:]
    bounds: dict[str, Any] = {"min": low}
    if high is not None:
        bounds["max"] = high
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(code, f"Invalid value for '{name}': must be an integer.", name, **bounds)
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise TaskError(code, f"Invalid value for '{name}': must be {limit}.", name, **bounds)
    return value


def _choice(
    task: dict[str, Any], name: str, allowed: tuple[str, ...], default: str, fold_case: bool = False
) -> str:
    value = task.get(name)
    if value is None:
        return default
    code = "invalid" + name[0].upper() + name[1:]
    if isinstance(value, str):
        for option in allowed:
            if value == option or (fold_case and value.upper() == option.upper()):
                return option
    raise TaskError(
        code,
        f"Invalid value for '{name}': must be one of {', '.join(allowed)}.",
        name,
        allowedValues=list(allowed),
    )


def _url(task: dict[str, Any], name: str) -> str | None:
    value = task.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        code = "invalid" + name[0].upper() + name[1:]
        raise TaskError(code, f"Invalid value for '{name}': must be an http(s) URL.", name)
    return value


def _bool(task: dict[str, Any], name: str, parameter: str | None = None) -> bool:
    value = task.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        parameter = parameter or name
        raise TaskError(
            "invalid" + name[0].upper() + name[1:],
            f"Invalid value for '{parameter}': must be a boolean.",
            parameter,
        )
    return value


def validate_inference(
    task: dict[str, Any],
    served: str | Collection[str] = PRO,
    reject_unknown: bool = True,
    retired: Collection[str] = (),
) -> InferenceRequest:
    """Check one imageInference task against its model's page; raise the first violation.

    `served` are the model ids accepted (one id, or several); a `retired` one answers as a
    model the API no longer knows."""
    task_uuid = _task_uuid(task)
    rules = _check_model(task, (served,) if isinstance(served, str) else served, retired)
    model = rules.model
    _check_fields(task, model, reject_unknown)
    prompt = _prompt(task)
    references = _reference_images(task, reject_unknown)
    width, height, preset = _dimensions(task, rules, references)

    number_results = _int_in(task, "numberResults", *NUMBER_RESULTS)
    output_quality = _int_in(task, "outputQuality", *OUTPUT_QUALITY)
    output_type = _choice(task, "outputType", OUTPUT_TYPES, "URL")
    output_format = _choice(task, "outputFormat", OUTPUT_FORMATS, "JPG", fold_case=True)
    delivery = _choice(task, "deliveryMethod", DELIVERY_METHODS, "sync")
    ttl = _int_in(task, "ttl", MIN_TTL, None)
    webhook_url = _url(task, "webhookURL")
    upload_endpoint = _url(task, "uploadEndpoint")
    include_cost = _bool(task, "includeCost")
    check_content = _safety(task, reject_unknown)
    return InferenceRequest(
        task_uuid=task_uuid,
        model=model,
        prompt=prompt,
        width=width,
        height=height,
        preset=preset,
        reference_images=references,
        output_type=output_type,
        output_format=output_format,
        output_quality=DEFAULT_QUALITY if output_quality is None else output_quality,
        delivery_method=delivery,
        webhook_url=webhook_url,
        upload_endpoint=upload_endpoint,
        include_cost=include_cost,
        number_results=number_results or 1,
        ttl=ttl,
        check_content=check_content,
    )


def _task_uuid(task: dict[str, Any]) -> str:
    task_uuid = task.get("taskUUID")
    if task_uuid is None:
        raise TaskError("missingParameter", "Missing required parameter 'taskUUID'.", "taskUUID")
    if not is_uuid(task_uuid):
        raise TaskError(
            "invalidTaskUUID", "Invalid value for 'taskUUID': must be a UUID.", "taskUUID"
        )
    return str(task_uuid)


def _check_model(
    task: dict[str, Any], served: Collection[str], retired: Collection[str]
) -> ModelRules:
    model = task.get("model")
    if model is None:
        raise TaskError("missingParameter", "Missing required parameter 'model'.", "model")
    if isinstance(model, str) and model in retired:
        raise retired_model_error(model)
    if not isinstance(model, str) or model not in served or model not in MODELS:
        raise TaskError("unknownModel", f"Unknown model '{model}'.", "model")
    return MODELS[model]


def _check_fields(task: dict[str, Any], model: str, reject_unknown: bool) -> None:
    if reject_unknown:
        for name in task:
            if name not in INFERENCE_FIELDS:
                raise TaskError(
                    "unknownParameter", f"Unknown parameter '{name}' for model {model}.", name
                )


def _prompt(task: dict[str, Any]) -> str:
    prompt = task.get("positivePrompt")
    if prompt is None:
        raise TaskError(
            "missingParameter", "Missing required parameter 'positivePrompt'.", "positivePrompt"
        )
    if not isinstance(prompt, str) or len(prompt) < 1:
        raise TaskError(
            "invalidPositivePrompt",
            "Invalid value for 'positivePrompt': must be at least 1 character.",
            "positivePrompt",
            min=1,
        )
    return prompt


def _dimensions(
    task: dict[str, Any], rules: ModelRules, references: tuple[str, ...]
) -> tuple[int | None, int | None, str]:
    """`width`, `height` and the resolution preset, checked against each other."""
    width = _int_in(task, "width", 1, None)
    height = _int_in(task, "height", 1, None)
    resolution = task.get("resolution")
    if resolution is not None and (width is not None or height is not None):
        raise TaskError(
            "incompatibleParameters",
            "'resolution' cannot be combined with 'width' and 'height'.",
            "resolution",
        )
    if (width is None) != (height is None):
        missing = "height" if width is not None else "width"
        raise TaskError(
            "missingParameter",
            f"'width' and 'height' must be sent together; '{missing}' is missing.",
            missing,
        )
    preset = _choice(task, "resolution", tuple(rules.dimensions), rules.default_preset)
    allowed = rules.allowed_sizes
    if width is not None and height is not None and (width, height) not in allowed:
        raise TaskError(
            "unsupportedDimensions",
            f"Unsupported dimensions {width}x{height} (width x height) for model {rules.model}: "
            "use one of the listed combinations.",
            "width",
            allowedValues=[f"{w}x{h}" for w, h in sorted(allowed)],
        )
    if width is None and resolution is None and not references:
        raise TaskError(
            "missingParameter",
            "Provide 'inputs.referenceImages', 'width' and 'height', or 'resolution'.",
            "resolution",
        )
    return width, height, preset


def _reference_images(task: dict[str, Any], reject_unknown: bool) -> tuple[str, ...]:
    inputs = task.get("inputs")
    if inputs is None:
        return ()
    if not isinstance(inputs, dict):
        raise TaskError("invalidInputs", "Invalid value for 'inputs': must be an object.", "inputs")
    if reject_unknown:
        for name in inputs:
            if name not in INPUT_FIELDS:
                raise TaskError(
                    "unknownParameter", f"Unknown parameter 'inputs.{name}'.", f"inputs.{name}"
                )
    images = inputs.get("referenceImages")
    if images is None:
        return ()
    if (
        not isinstance(images, list)
        or not images
        or not all(isinstance(i, str) and i for i in images)
    ):
        raise TaskError(
            "invalidReferenceImages",
            "Invalid value for 'inputs.referenceImages': must be a non-empty array "
            "of image UUIDs, URLs, data URIs or base64 strings.",
            "inputs.referenceImages",
        )
    return tuple(images)


def _safety(task: dict[str, Any], reject_unknown: bool) -> bool:
    safety = task.get("safety")
    if safety is None:
        return False
    if not isinstance(safety, dict):
        raise TaskError("invalidSafety", "Invalid value for 'safety': must be an object.", "safety")
    if reject_unknown:
        for name in safety:
            if name not in SAFETY_FIELDS:
                raise TaskError(
                    "unknownParameter", f"Unknown parameter 'safety.{name}'.", f"safety.{name}"
                )
    check = _bool(safety, "checkContent", "safety.checkContent")
    mode = safety.get("mode")
    if mode is None:
        return check
    if mode not in SAFETY_MODES:
        raise TaskError(
            "invalidSafetyMode",
            "Invalid value for 'safety.mode': must be one of none, fast.",
            "safety.mode",
            allowedValues=list(SAFETY_MODES),
        )
    return bool(mode == "fast")
