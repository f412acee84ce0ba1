"""A provider item read without the schema gives what the schema gives, or is left to it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from pipeline.schemas import ProviderItemSchema, _load_items, _plain_item, parse_provider_body

pytestmark = pytest.mark.unit

SCHEMA = ProviderItemSchema()
KEYS = [*ProviderItemSchema._declared_fields, "extra", "imageurl"]
VALUES = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**308, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["code", "message", "x"]), st.text(max_size=4), max_size=2),
)
STRING_OR_NULL = st.one_of(st.none(), st.text(max_size=8))
PLAIN = st.fixed_dictionaries(
    {"taskUUID": st.text(max_size=8)},
    optional={
        **{name: STRING_OR_NULL for name in ["taskType", "imageUUID", "imageURL", "status"]},
        "seed": VALUES,
        "cost": VALUES,
        "NSFWContent": VALUES,
        "progress": st.one_of(st.none(), st.floats(), st.integers()),
        "extra": VALUES,
    },
)


@st.composite
def near_plain(draw: st.DrawFn) -> dict[str, Any]:
    """An item close to what Runware sends: plain values, and sometimes one odd value."""
    item: dict[str, Any] = draw(PLAIN)
    if draw(st.booleans()):
        item[draw(st.sampled_from(KEYS))] = draw(VALUES)
    return item


ITEMS = st.one_of(near_plain(), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=len(KEYS)))


def schema_load(item: Any) -> tuple[str, Any]:
    try:
        return "loaded", SCHEMA.load(item)
    except ValidationError as exc:
        return "refused", exc.messages


@settings(max_examples=600, derandomize=True, deadline=None)
@given(ITEMS)
def test_a_plain_item_reads_as_the_schema_reads_it(item: dict[str, Any]) -> None:
    plain = _plain_item(item)
    if plain is not None:
        assert schema_load(item) == ("loaded", plain)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(ITEMS, max_size=3))
def test_a_list_of_items_loads_or_is_refused_as_the_schema_does(items: list[Any]) -> None:
    many = ProviderItemSchema(many=True)
    try:
        expected: tuple[str, Any] = ("loaded", many.load(items))
    except ValidationError as exc:
        expected = ("refused", exc.messages)
    try:
        got: tuple[str, Any] = ("loaded", _load_items(items))
    except ValidationError as exc:
        got = ("refused", exc.messages)
    assert got == expected


def test_the_emulator_s_success_item_takes_the_plain_path() -> None:
    item = {
        "taskType": "imageInference",
        "taskUUID": "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10",
        "imageUUID": "2237f802-98c8-41d2-b25b-9b4fe298a198",
        "imageURL": "https://im.runware.ai/image/ws/2/ii/2237f802.jpg",
        "seed": 2011109472,
        "cost": 0.07,
        "unknownField": {"nested": [1, 2]},
    }
    assert _plain_item(item) == SCHEMA.load(item)
    results, untied = parse_provider_body({"data": [item]})
    assert [(r.status, r.seed, r.cost) for r in results] == [("success", 2011109472, 0.07)]
    assert untied == []


@pytest.mark.parametrize(
    "item",
    [
        {"taskUUID": 7},
        {"taskUUID": "t", "imageUUID": 5},
        {"taskUUID": "t", "progress": True},
        {"taskUUID": "t", "progress": float("nan")},
        {"taskUUID": "t", "progress": 10**400},
        {"taskUUID": "t", "error": {"code": "x"}},
        ["not", "a", "dict"],
    ],
)
def test_anything_but_a_plain_item_is_left_to_the_schema(item: Any) -> None:
    assert _plain_item(item) is None
