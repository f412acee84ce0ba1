"""The model catalog refuses what Runware would refuse, by field, before a request costs."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.catalog import CATALOG, UnknownModel, get_model

pytestmark = pytest.mark.unit

AIR = "xai:grok-imagine@image-pro"
SPEC = get_model(AIR)

# The dimension table of runware-api.md §7, written out so the catalog is checked against it.
TABLE_1K = [
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
]
TABLE_2K = [
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
]


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"positivePrompt": "a lighthouse", "width": 1024, "height": 1024}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def test_the_table_holds_26_distinct_sizes() -> None:
    assert len(set(TABLE_1K + TABLE_2K)) == 26
    assert SPEC.sizes == frozenset(TABLE_1K + TABLE_2K)


@pytest.mark.parametrize(("width", "height"), TABLE_1K + TABLE_2K)
def test_every_listed_size_is_accepted(width: int, height: int) -> None:
    assert SPEC.validate(params(width=width, height=height)) == {}


@pytest.mark.parametrize(
    ("width", "height", "preset"),
    [(w, h, "1K") for w, h in TABLE_1K] + [(w, h, "2K") for w, h in TABLE_2K],
)
def test_each_size_belongs_to_its_preset(width: int, height: int, preset: str) -> None:
    assert SPEC.preset_of(width, height) == preset


@pytest.mark.parametrize(
    ("width", "height"),
    [(1024, 1025), (1280, 720), (896, 1024), (512, 512), (1024, 2048), (4096, 4096)],
)
def test_an_unlisted_size_is_refused_naming_width(width: int, height: int) -> None:
    errors = SPEC.validate(params(width=width, height=height))
    assert list(errors) == ["width"]
    assert f"{width}x{height}" in errors["width"][0]
    assert "1024x1024" in errors["width"][0]  # the message lists what is accepted


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"height": None}, "height", "together"),
        ({"width": None}, "width", "together"),
        ({"resolution": "1K"}, "resolution", "cannot be combined"),
        ({"width": None, "height": None, "resolution": "4K"}, "resolution", "1K, 2K"),
        ({"width": None, "height": None}, "resolution", "referenceImages"),
        ({"numberResults": 0}, "numberResults", "between 1 and 20"),
        ({"numberResults": 21}, "numberResults", "between 1 and 20"),
        ({"outputQuality": 19}, "outputQuality", "between 20 and 99"),
        ({"outputQuality": 100}, "outputQuality", "between 20 and 99"),
        ({"outputFormat": "GIF"}, "outputFormat", "JPG, PNG, WEBP"),
        ({"safety": {"mode": "full"}}, "safety.mode", "none, fast"),
        ({"inputs": {"referenceImages": ["x"] * 6}}, "inputs.referenceImages", "at most 5"),
    ],
)
def test_each_violation_is_refused_naming_the_field(
    overrides: dict[str, Any], field: str, fragment: str
) -> None:
    errors = SPEC.validate(params(**overrides))
    assert field in errors, errors
    assert any(fragment in message for message in errors[field])
    assert set(errors) == {field}


@pytest.mark.parametrize(
    "overrides",
    [
        {"width": None, "height": None, "resolution": "1K"},
        {"width": None, "height": None, "resolution": "2K"},
        {"width": None, "height": None, "inputs": {"referenceImages": ["https://x/a.png"]}},
        {"numberResults": 1},
        {"numberResults": 20},
        {"outputQuality": 20},
        {"outputQuality": 99},
        {"outputFormat": "JPG"},
        {"outputFormat": "PNG"},
        {"outputFormat": "WEBP"},
        {"safety": {"mode": "none"}},
        {"safety": {"mode": "fast", "checkContent": True}},
    ],
)
def test_boundaries_and_alternatives_are_accepted(overrides: dict[str, Any]) -> None:
    assert SPEC.validate(params(**overrides)) == {}


def test_expected_sizes() -> None:
    assert SPEC.expected_sizes(1280, 896, None, 0) == {(1280, 896)}
    assert SPEC.expected_sizes(None, None, None, 0) == {(1024, 1024)}
    assert SPEC.expected_sizes(None, None, "2K", 0) == {(2048, 2048)}
    # With reference images the aspect ratio follows the input: any size of the preset's row.
    assert SPEC.expected_sizes(None, None, "2K", 2) == frozenset(TABLE_2K)
    assert SPEC.expected_sizes(None, None, None, 1) == frozenset(TABLE_1K)


def test_estimate_cost() -> None:
    assert SPEC.estimate_cost(1, 0) == pytest.approx(0.07)
    assert SPEC.estimate_cost(20, 0) == pytest.approx(1.4)
    assert SPEC.estimate_cost(1, 1) == pytest.approx(0.074)
    assert SPEC.estimate_cost(3, 5) == pytest.approx(3 * (0.072 + 5 * 0.002))


def test_catalog_lookup() -> None:
    assert CATALOG[AIR] is SPEC
    with pytest.raises(UnknownModel):
        get_model("runware:does-not-exist@1")


# --- the Grok Imagine family: one entry per model, each with its source ---

IMAGE = get_model("xai:grok-imagine@image")
QUALITY = get_model("xai:grok-imagine@image-quality")


def test_the_catalog_serves_the_three_grok_imagine_models() -> None:
    assert set(CATALOG) == {
        "xai:grok-imagine@image-pro",
        "xai:grok-imagine@image",
        "xai:grok-imagine@image-quality",
    }
    for spec in CATALOG.values():
        assert spec.source, f"{spec.air} names no source"
    assert "ASSUMED" in QUALITY.source


def test_grok_imagine_image_accepts_its_thirteen_1k_pairs_only() -> None:
    # Runware's page docs/models/xai-grok-imagine-image lists exactly the Pro model's 1K row.
    assert IMAGE.sizes == frozenset(TABLE_1K)
    assert list(IMAGE.presets) == ["1K"]
    assert IMAGE.validate(params(width=1408, height=704)) == {}
    assert "width" in IMAGE.validate(params(width=2048, height=2048))
    assert "resolution" in IMAGE.validate(params(width=None, height=None, resolution="2K"))
    assert IMAGE.validate(params(width=None, height=None, resolution="1K")) == {}


def test_grok_imagine_image_costs_two_cents_and_edits_add_per_input_image() -> None:
    assert IMAGE.estimate_cost(3, 0) == pytest.approx(0.06)
    assert IMAGE.estimate_cost(1, 2) == pytest.approx(0.022 + 2 * 0.002)


def test_grok_imagine_image_quality_takes_1k_and_2k() -> None:
    assert QUALITY.sizes == frozenset(TABLE_1K + TABLE_2K)
    assert QUALITY.validate(params(width=None, height=None, resolution="2K")) == {}
    assert QUALITY.expected_sizes(None, None, "2K", 0) == frozenset({(2048, 2048)})


def test_size_errors_checks_only_the_size_rules() -> None:
    request = params(width=2048, height=2048, numberResults=50)
    assert set(IMAGE.size_errors(request)) == {"width"}
    assert SPEC.size_errors(request) == {}
