"""What a request may hold before anything parses it, and which ids reach a key name."""

from __future__ import annotations

import uuid

import pytest

from pipeline.enqueue import is_job_id
from webhooks.limits import MAX_JSON_DEPTH, json_depth, nests_too_deep

pytestmark = pytest.mark.unit


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_past_the_limit_is_caught_and_at_the_limit_let_through() -> None:
    assert nests_too_deep(nested(MAX_JSON_DEPTH + 1)) is True
    assert nests_too_deep(nested(MAX_JSON_DEPTH)) is False
    assert nests_too_deep(b'{"a": ' * 40 + b"1" + b"}" * 40) is True


def test_many_brackets_side_by_side_or_inside_strings_are_not_nesting() -> None:
    flat = b"[" + b",".join([b"[]"] * 100) + b"]"
    assert json_depth(flat) == 2
    assert nests_too_deep(flat) is False
    in_strings = b'["' + b"[[[[" * 20 + b'"]'
    assert nests_too_deep(in_strings) is False


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid4()),
        str(uuid.uuid4()).upper(),
        "{" + str(uuid.uuid4()) + "}",
        "urn:uuid:" + str(uuid.uuid4()),
        uuid.uuid4().hex,
        str(uuid.uuid4()) + "\n",
        " " + str(uuid.uuid4()),
        "",
        "not-a-uuid",
        "\u0660" * 8 + str(uuid.uuid4())[8:],  # Arabic-Indic zeros: digits, not hex
    ],
)
def test_job_ids_are_exactly_the_canonical_text_of_a_uuid(value: str) -> None:
    try:
        canonical = str(uuid.UUID(value)) == value
    except ValueError:
        canonical = False
    assert is_job_id(value) is canonical
