"""The model catalog: what each Runware model accepts, so requests are refused before they cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

FORMAT_EXTENSIONS = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}
FORMAT_CONTENT_TYPES = {"JPG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts and what it costs."""

    air: str
    name: str
    presets: dict[str, tuple[tuple[int, int], ...]]
    default_preset: str
    source: str
    number_results: tuple[int, int] = (1, 20)
    output_quality: tuple[int, int] = (20, 99)
    default_output_quality: int = 95
    output_formats: tuple[str, ...] = ("JPG", "PNG", "WEBP")
    default_output_format: str = "JPG"
    safety_modes: tuple[str, ...] = ("none", "fast")
    max_reference_images: int = 5
    price_per_image: float = 0.07
    price_per_edit: float = 0.072
    price_per_input_image: float = 0.002
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> frozenset[tuple[int, int]]:
        return frozenset(size for row in self.presets.values() for size in row)

    def preset_of(self, width: int, height: int) -> str | None:
        for name, row in self.presets.items():
            if (width, height) in row:
                return name
        return None

    def expected_sizes(
        self, width: int | None, height: int | None, resolution: str | None, references: int
    ) -> frozenset[tuple[int, int]]:
        """Sizes a finished image may have for these parameters."""
        if width is not None and height is not None:
            return frozenset({(width, height)})
        preset = resolution or self.default_preset
        row = self.presets[preset]
        if references:
            return frozenset(row)
        return frozenset({row[0]})

    def size_errors(self, params: dict[str, Any]) -> dict[str, list[str]]:
        """Only the size rules (width/height, resolution, edits): whether this model accepts the
        size another model's request asked for."""
        errors: dict[str, list[str]] = {}

        def fail(name: str, message: str) -> None:
            errors.setdefault(name, []).append(message)

        self._check_size(params, fail)
        return errors

    def estimate_cost(self, images: int, references: int) -> float:
        if references:
            per_image = self.price_per_edit + references * self.price_per_input_image
            return round(images * per_image, 6)
        return round(images * self.price_per_image, 6)

    def validate(self, params: dict[str, Any]) -> dict[str, list[str]]:
        """Check generation parameters against this model; return errors by field name."""
        errors: dict[str, list[str]] = {}

        def fail(name: str, message: str) -> None:
            errors.setdefault(name, []).append(message)

        self._check_size(params, fail)
        self._check_options(params, fail)
        return errors

    def _check_size(self, params: dict[str, Any], fail: Callable[[str, str], None]) -> None:
        """Exactly one way of naming the size: width and height, a preset, or an edit."""
        width, height = params.get("width"), params.get("height")
        resolution = params.get("resolution")
        references = (params.get("inputs") or {}).get("referenceImages") or []
        if (width is None) != (height is None):
            fail("width" if width is None else "height", "width and height must be given together")
        if resolution is not None and (width is not None or height is not None):
            fail("resolution", "resolution cannot be combined with width/height")
        if resolution is not None and resolution not in self.presets:
            fail("resolution", f"must be one of {', '.join(self.presets)}")
        if width is not None and height is not None and (width, height) not in self.sizes:
            fail(
                "width",
                f"{width}x{height} is not a size {self.air} accepts; "
                f"accepted: {', '.join(f'{w}x{h}' for w, h in sorted(self.sizes))}",
            )
        if width is None and height is None and resolution is None and not references:
            fail("resolution", "give inputs.referenceImages, width and height, or resolution")
        if len(references) > self.max_reference_images:
            fail("inputs.referenceImages", f"at most {self.max_reference_images} images")

    def _check_options(self, params: dict[str, Any], fail: Callable[[str, str], None]) -> None:
        """Counts, quality, format and safety mode within this model's ranges."""
        low, high = self.number_results
        count = params.get("numberResults", 1)
        if not low <= count <= high:
            fail("numberResults", f"must be between {low} and {high}")
        quality = params.get("outputQuality")
        low, high = self.output_quality
        if quality is not None and not low <= quality <= high:
            fail("outputQuality", f"must be between {low} and {high}")
        fmt = params.get("outputFormat")
        if fmt is not None and fmt not in self.output_formats:
            fail("outputFormat", f"must be one of {', '.join(self.output_formats)}")
        safety = params.get("safety") or {}
        mode = safety.get("mode")
        if mode is not None and mode not in self.safety_modes:
            fail("safety.mode", f"must be one of {', '.join(self.safety_modes)}")


def _row(*sizes: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    if len(sizes) != len(ASPECTS):
        raise ValueError(f"a preset row names one size per aspect ratio ({len(ASPECTS)})")
    return sizes


# Each model's thirteen sizes in the order of ASPECTS, one row per `resolution` preset.
ROW_1K = _row(
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
ROW_2K = _row(
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

GROK_IMAGINE_IMAGE_PRO = ModelSpec(
    air="xai:grok-imagine@image-pro",
    name="Grok Imagine Image Pro",
    presets={"1K": ROW_1K, "2K": ROW_2K},
    default_preset="1K",
    source=(
        "runware.ai/docs/models/xai-grok-imagine-image-pro: 1K and 2K dimension tables, "
        "$0.07 per image, $0.072 per edit plus $0.002 per input image"
    ),
)

GROK_IMAGINE_IMAGE = ModelSpec(
    air="xai:grok-imagine@image",
    name="Grok Imagine Image",
    presets={"1K": ROW_1K},
    default_preset="1K",
    source=(
        "runware.ai/docs/models/xai-grok-imagine-image: thirteen 1K dimension pairs (the same as "
        "the Pro model's 1K row), $0.02 per image at 1024x1024, $0.022 per edit "
        "(+$0.002 per input image); resolution 1K only per runware-sdk 1.8.0 types/task_map.py"
    ),
    price_per_image=0.02,
    price_per_edit=0.022,
    price_per_input_image=0.002,
)

# --- ASSUMED: xai:grok-imagine@image-quality ---
# runware-sdk 1.8.0 (runware/types/task_map.py) lists its parameters: resolution 1K or 2K,
# width/height, numberResults, outputFormat JPG/PNG/WEBP, outputQuality, inputs, safety. Its
# Runware model page was not found, so everything below that the SDK does not say is assumed:
# the dimension pairs (the Pro model's 1K and 2K rows, which xAI's Pro redirects to), the prices
# (the Pro model's), numberResults 1-20, outputQuality 20-99 and at most 5 reference images.
QUALITY_ASSUMED_PRESETS = {"1K": ROW_1K, "2K": ROW_2K}
QUALITY_ASSUMED_PRICE_PER_IMAGE = 0.07
QUALITY_ASSUMED_PRICE_PER_EDIT = 0.072
QUALITY_ASSUMED_PRICE_PER_INPUT_IMAGE = 0.002
QUALITY_ASSUMED_NUMBER_RESULTS = (1, 20)
QUALITY_ASSUMED_OUTPUT_QUALITY = (20, 99)
QUALITY_ASSUMED_MAX_REFERENCE_IMAGES = 5

GROK_IMAGINE_IMAGE_QUALITY = ModelSpec(
    air="xai:grok-imagine@image-quality",
    name="Grok Imagine Image Quality",
    presets=QUALITY_ASSUMED_PRESETS,
    default_preset="1K",
    source=(
        "runware-sdk 1.8.0 runware/types/task_map.py (resolution 1K or 2K, output formats); "
        "dimension pairs, prices and limits ASSUMED from the Pro model (no Runware model page "
        "found): see QUALITY_ASSUMED_* in pipeline/catalog.py"
    ),
    number_results=QUALITY_ASSUMED_NUMBER_RESULTS,
    output_quality=QUALITY_ASSUMED_OUTPUT_QUALITY,
    max_reference_images=QUALITY_ASSUMED_MAX_REFERENCE_IMAGES,
    price_per_image=QUALITY_ASSUMED_PRICE_PER_IMAGE,
    price_per_edit=QUALITY_ASSUMED_PRICE_PER_EDIT,
    price_per_input_image=QUALITY_ASSUMED_PRICE_PER_INPUT_IMAGE,
)

CATALOG: dict[str, ModelSpec] = {
    spec.air: spec
    for spec in (GROK_IMAGINE_IMAGE_PRO, GROK_IMAGINE_IMAGE, GROK_IMAGINE_IMAGE_QUALITY)
}


class UnknownModel(KeyError):
    """The model is not in the catalog."""


def get_model(air: str) -> ModelSpec:
    try:
        return CATALOG[air]
    except KeyError:
        raise UnknownModel(air) from None
