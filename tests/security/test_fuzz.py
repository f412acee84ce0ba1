"""Fuzzing the webhook receiver and the jobs API: whatever arrives, the answer is never a 5xx,
every 4xx is the one JSON error shape and every 2xx is JSON. Seeded (derandomize) so that a run
in CI is the same run as on a laptop."""

from __future__ import annotations

import json
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from pipeline import urls
from tests.security.conftest import (
    ACME_KEY,
    ERROR_KEYS,
    GLOBEX_KEY,
    PROMPT,
    Harness,
    assert_error,
    success_body,
)

pytestmark = pytest.mark.security

SEEN: Counter[str] = Counter()  # examples run, and 5xx seen, per fuzzer
REAL_GETADDRINFO = socket.getaddrinfo


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


@pytest.fixture(autouse=True)
def numeric_hosts_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A generated callback host must not wait on real DNS: names do not resolve, literal
    addresses still do."""

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        return REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(urls.socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print("\nfuzz: " + " ".join(f"{name}={count}" for name, count in sorted(SEEN.items())))


def check(fuzzer: str, answer: TestResponse) -> None:
    """The property every fuzzer holds the app to."""
    SEEN[f"{fuzzer}.examples"] += 1
    SEEN[f"{fuzzer}.{answer.status_code}"] += 1
    SEEN.setdefault(f"{fuzzer}.5xx", 0)
    text = answer.get_data(as_text=True)
    if answer.status_code >= 500:
        SEEN[f"{fuzzer}.5xx"] += 1
    assert answer.status_code < 500, (answer.status_code, text[:500])
    body = answer.get_json(silent=True)
    assert answer.mimetype == "application/json", (answer.status_code, answer.mimetype)
    if answer.status_code >= 400:
        assert isinstance(body, dict) and set(body) == ERROR_KEYS, (answer.status_code, text)
        assert body["status"] == answer.status_code and isinstance(body["code"], str)
        assert isinstance(body["message"], str) and body["message"]
        assert isinstance(body["errors"], dict)
    else:
        assert body is not None or text.strip() == "null", text[:500]


def store_state(harness: Harness) -> tuple[Any, ...]:
    """What a refused request must leave as it was, but the bucket: listing it on every example
    would take most of the time budget, so each fuzzer compares the bucket once at its end."""
    return (harness._redis_dump(), len(harness.outbound.requests), list(harness.dispatcher.sent))


# ------------------------------------------------------------------ values
# Text with NUL, control characters, every plane and lone surrogates (JSON can carry them as
# \ud800 escapes, and Python's parser hands them on).
NASTY_TEXT = [
    "\ud800",
    "\udfff",
    "a\udc80b",
    "\x00",
    "a\x00b",
    "\r\n",
    "\u202e",
    "\ufeff",
    "\u00e9",
    "\U0001f600",
    "\u0130",
    " ",
    "../../x",
    "%s%n",
    "${jndi:x}",
    "<script>",
    "\\",
    "insufficientCredits",
    "x" * 3000,
]
text = st.sampled_from(NASTY_TEXT) | st.text(st.characters(blacklist_categories=()), max_size=40)
big_ints = st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 2**64 - 1, -1, 0])
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | st.integers() | big_ints | floats | text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


def q(value: str, safe: str = "") -> str:
    """Percent-encode for a URL; a lone surrogate goes as the bytes Python would give it."""
    return quote(value, safe=safe, errors="surrogatepass")


def encode(value: Any) -> bytes:
    # allow_nan: NaN and Infinity are not JSON, but Python's parser accepts them, so they arrive.
    return json.dumps(value, allow_nan=True).encode()


def nested(depth: int, opener: str = "[", closer: str = "]", inner: str = "1") -> bytes:
    return (opener * depth + inner + closer * depth).encode()


SPECIAL_BODIES = [
    b"",
    b" ",
    b"null",
    b"true",
    b"0",
    b'""',
    b"[]",
    b"{}",
    b"{",
    b"}",
    b"[",
    b"\x00",
    b"\xff\xfe\x00\x00",
    b"\xef\xbb\xbf{}",
    "{}".encode("utf-16"),
    b'{"a": "\xc3\x28"}',
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1" * 5000,
    b"-" + b"9" * 4301,
    b'{"data": [{"seed": 1' + b"0" * 5000 + b"}]}",
    b'{"data": [{"progress": 1e400, "cost": NaN, "seed": Infinity}]}',
    b'{"positivePrompt": "\\ud800", "resolution": "1K"}',
    b'{"positivePrompt": "\\udfff\\u0000", "resolution": "1K"}',
    b'{"positivePrompt": "' + b"a" * 60000 + b'"}',
    b'{"a": 1, "a": 2}',
    b'{"data": 1, "data": [], "errors": {}}',
    nested(33),
    nested(100_000),
    nested(1000, '{"a":', "}"),
    nested(40, '{"data":[', "]}"),
    b'"' + b"[" * 1000 + b'"',
    b'["\\"' + b"[" * 50 + b'"]',
]
raw_bodies = st.sampled_from(SPECIAL_BODIES) | st.binary(max_size=200)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/merge-patch+json",
        "application/vnd.api+json",
        "text/json",
        "*/*",
        "application/json; charset=utf-16",
        "APPLICATION/JSON",
    ]
) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
header_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n\x00"), max_size=300
)
tokens = st.sampled_from(["", "x", "0" * 64, "token", "%00", "A" * 5000]) | text


# ------------------------------------------------------------------ (a) the webhook endpoint
class LiveTask:
    """A task of acme's that is still awaiting its result; replaced once a body ends it."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.job_id, self.task_uuid = harness.submitted_job()

    def current(self) -> str:
        slot = self.harness.store.get_slot(self.job_id, 0)
        if slot is None or slot.state != "submitted" or slot.task_uuid != self.task_uuid:
            # An account error code for a live slot rightly opens the circuit; close it so the
            # next task can be submitted.
            self.harness.service.reset_circuit()
            self.job_id, self.task_uuid = self.harness.submitted_job()
        return self.task_uuid


def mostly(
    valid: st.SearchStrategy[Any], odds: int = 8, other: st.SearchStrategy[Any] | None = None
) -> st.SearchStrategy[Any]:
    """A valid value `odds` times in `odds + 1`, else any JSON value (or `other`): garbage in
    one field must not hide the paths the other fields reach."""
    return st.sampled_from([True] * odds + [False]).flatmap(
        lambda valid_now: valid if valid_now else (json_values if other is None else other)
    )


def provider_shaped(task_uuid: str) -> st.SearchStrategy[Any]:
    """Bodies that look like Runware's, with garbage in their fields."""
    codes = (
        st.sampled_from(
            [
                "insufficientCredits",
                "timeoutProvider",
                "invalidApiKey",
                "providerContentPolicyViolation",
            ]
        )
        | text
    )
    nested_error = st.fixed_dictionaries(
        {}, optional={"code": mostly(codes), "message": mostly(text)}
    )
    item = st.fixed_dictionaries(
        {"taskUUID": mostly(st.just(task_uuid))},
        optional={
            "taskType": mostly(st.just("imageInference") | text),
            "imageUUID": mostly(st.just(str(uuid.uuid4())) | text),
            "imageURL": mostly(st.just("https://im.runware.ai/image/x.jpg") | text),
            "seed": json_values,
            "cost": json_values,
            "NSFWContent": json_values,
            "status": mostly(st.sampled_from(["success", "error", "processing"]) | text),
            "progress": mostly(st.floats(0, 1)),
            "error": mostly(nested_error),
            "extra": json_values,
        },
    )
    error = st.fixed_dictionaries(
        {},
        optional={
            "taskUUID": mostly(st.just(task_uuid) | st.just("")),
            "code": mostly(codes),
            "message": mostly(text),
            "parameter": json_values,
            "status": mostly(text),
        },
    )
    return (
        st.fixed_dictionaries(
            {},
            optional={
                "data": mostly(st.lists(item, max_size=3) | item),
                "errors": mostly(st.lists(error, max_size=3)),
            },
        )
        | item
        | st.lists(item, max_size=3)
        | st.just(success_body(task_uuid))
    )


@st.composite
def webhook_bodies(draw: st.DrawFn, task_uuid: str) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["provider", "provider", "provider", "json", "raw"]))
    if kind == "raw":
        body = draw(raw_bodies)
    else:
        value = draw(provider_shaped(task_uuid) if kind == "provider" else json_values)
        body = encode(value)
    content_type = draw(
        mostly(st.sampled_from(["application/json", "text/plain", ""]), odds=5, other=content_types)
    )
    return body, content_type


def test_fuzz_webhook_with_a_valid_token(harness: Harness) -> None:
    live = LiveTask(harness)

    @fuzz_settings(400)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        task_uuid = live.current()
        body, content_type = data.draw(webhook_bodies(task_uuid))
        check(
            "webhook.valid_token", harness.webhook(task_uuid, raw=body, content_type=content_type)
        )

    run()


def test_fuzz_webhook_with_bad_tokens(harness: Harness) -> None:
    _, task_uuid = harness.submitted_job()

    @fuzz_settings(150)
    @given(
        token=tokens,
        body=webhook_bodies(task_uuid),
        target=st.sampled_from(["live", "other", "segment"]),
        segment=text,
    )
    def run(token: str, body: tuple[bytes, str], target: str, segment: str) -> None:
        path_task = {"live": task_uuid, "other": str(uuid.uuid4()), "segment": q(segment) or "x"}[
            target
        ]
        before = store_state(harness)
        answer = harness.client.post(
            f"/webhooks/runware/{path_task}?token={q(token)}", data=body[0], content_type=body[1]
        )
        check("webhook.bad_token", answer)
        assert answer.status_code in {401, 404, 405, 413}, answer.status_code
        assert store_state(harness) == before, "a refused request changed something"

    bucket = harness.s3_keys()
    run()
    assert harness.s3_keys() == bucket


# ------------------------------------------------------------------ (b) POST /v1/jobs
SIZES = st.one_of(
    st.fixed_dictionaries({"resolution": mostly(st.sampled_from(["1K", "2K", "1k", "", "8K"]))}),
    st.fixed_dictionaries(
        {
            "width": mostly(st.sampled_from([1024, 2048, 1536, 0, -1, 2**40])),
            "height": mostly(st.sampled_from([1024, 768, 2048, -1, 10**20])),
        }
    ),
    st.just({}),
)
JOB_FIELDS = {
    "numberResults": mostly(st.integers(-2, 12)),
    "outputFormat": mostly(st.sampled_from(["jpg", "PNG", "webp", "gif", ""])),
    "outputQuality": mostly(st.integers(0, 120)),
    "metadata": mostly(
        st.dictionaries(text, text, max_size=12) | st.just({"order": "42", "team": "web"})
    ),
    "callbackURL": mostly(
        st.sampled_from(
            [
                "http://93.184.216.34/cb",
                "https://93.184.216.34:8443/cb",
                "http://127.0.0.1/cb",
                "http://169.254.169.254/",
                "http://100.100.100.200/",
                "http://[::1]/",
                "http://93.184.216.34:99999/",
                "http://cb.example.com/x",
                "ftp://93.184.216.34/",
                "http://93.184.216.34/" + "a" * 3000,
                "http://93.184.216.34/\r\n",
            ]
        )
        | text.map(lambda value: "http://" + value)
    ),
    "idempotencyKey": mostly(st.sampled_from(["order-1", "order-2", "x" * 256, "a b"]) | text),
    "deadlineSeconds": mostly(st.integers(-100, 100_000)),
    "inputs": mostly(
        st.fixed_dictionaries(
            {},
            optional={
                "referenceImages": mostly(
                    st.lists(
                        st.sampled_from(
                            ["https://im.runware.ai/r.jpg", "", "data:image/png;base64,AAAA"]
                        )
                        | text,
                        max_size=6,
                    )
                )
            },
        )
    ),
    "safety": mostly(
        st.fixed_dictionaries({}, optional={"checkContent": json_values, "mode": json_values})
    ),
    "taskType": mostly(st.just("imageInference")),
    "taskUUID": mostly(st.just(str(uuid.uuid4()))),
    "model": mostly(st.sampled_from(["xai:grok-imagine@image-pro", "runware:100@1", ""])),
}
# Fields the pipeline owns, and unknown ones: refused, so drawn only now and then.
ODD_FIELDS = st.sampled_from([True] * 4 + [False]).flatmap(
    lambda plain: (
        st.just({})
        if plain
        else (
            st.fixed_dictionaries(
                {},
                optional={
                    "deliveryMethod": st.just("async"),
                    "webhookURL": st.just("http://127.0.0.1/"),
                    "uploadEndpoint": st.just("http://127.0.0.1/"),
                    "ttl": json_values,
                },
            )
            | st.dictionaries(text, json_values, min_size=1, max_size=2)
        )
    )
)
job_requests = st.builds(
    lambda prompt, size, fields, odd: {**odd, **size, **fields, **prompt},
    st.fixed_dictionaries({"positivePrompt": mostly(st.just(PROMPT) | text)}) | st.just({}),
    SIZES,
    st.fixed_dictionaries({}, optional=JOB_FIELDS),
    ODD_FIELDS,
)


@st.composite
def job_posts(draw: st.DrawFn) -> tuple[bytes, str, dict[str, str]]:
    kind = draw(st.sampled_from(["request", "request", "json", "raw"]))
    if kind == "raw":
        body = draw(raw_bodies)
    else:
        body = encode(draw(job_requests if kind == "request" else json_values))
    headers = {"Authorization": f"Bearer {draw(st.sampled_from([ACME_KEY, GLOBEX_KEY]))}"}
    idempotency = draw(
        mostly(
            st.none(),
            odds=2,
            other=st.sampled_from(["order-1", "k" * 255, "k" * 256, "k" * 8000, "a b", "é"])
            | header_text,
        )
    )
    if isinstance(idempotency, str):
        headers["Idempotency-Key"] = idempotency
    content_type = draw(mostly(st.just("application/json"), odds=5, other=content_types))
    return body, content_type, headers


def test_fuzz_create_job(harness: Harness) -> None:
    @fuzz_settings(500)
    @given(job_posts())
    def run(post: tuple[bytes, str, dict[str, str]]) -> None:
        body, content_type, headers = post
        answer = harness.client.post(
            "/v1/jobs", data=body, content_type=content_type, headers=headers
        )
        check("create_job", answer)
        if answer.status_code in {200, 202}:
            assert is_job(answer.get_json())

    run()


def is_job(view: Any) -> bool:
    return isinstance(view, dict) and isinstance(view.get("id"), str) and "state" in view


# ------------------------------------------------------------------ (c) GET /v1/jobs/...
path_segments = (
    text
    | st.sampled_from(
        [
            str(uuid.uuid4()),
            str(uuid.uuid4()).upper(),
            "{" + str(uuid.uuid4()) + "}",
            str(uuid.uuid4()).replace("-", ""),
            "urn:uuid:" + str(uuid.uuid4()),
            "..",
            ".",
            "%00",
            "*",
            "a" * 5000,
            "00000000-0000-0000-0000-000000000000",
        ]
    )
).filter(bool)


def test_fuzz_get_job(harness: Harness) -> None:
    job_id, task_uuid = harness.succeeded_job()

    @fuzz_settings(200)
    @given(
        segment=path_segments
        | st.sampled_from(
            [f"{job_id}:slot:0", f"{job_id}:*", f"{job_id}\x00", task_uuid, f"{job_id}/cancel"]
        ),
        method=st.sampled_from(["GET", "GET", "POST"]),
        key=st.sampled_from([ACME_KEY, GLOBEX_KEY]),
    )
    def run(segment: str, method: str, key: str) -> None:
        path = f"/v1/jobs/{q(segment)}"
        if method == "POST":
            path += "/cancel"
        before = store_state(harness)
        answer = harness.api(method, path, key=key)
        check("get_job", answer)
        assert answer.status_code in {401, 404, 405}, (segment, answer.status_code)
        assert store_state(harness) == before, "a refused request changed something"

    bucket = harness.s3_keys()
    run()
    assert harness.s3_keys() == bucket


QUERY_VALUES = {
    "state": st.sampled_from(
        [
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "timed_out",
            "partially_succeeded",
            "SUCCEEDED",
            "",
        ]
    ),
    "cursor": st.sampled_from(
        [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "-1e400",
            "1e308",
            "0",
            "-0",
            "1.5",
            "0x10",
            "1_000",
            " 1",
            "9" * 5000,
            "1e2",
            "99999999999",
        ]
    )
    | st.floats().map(repr),
    "limit": st.sampled_from(["50", "200", "201", "0", "-1", "2147483648", "1.0", "", "1e2"])
    | st.integers(-5, 300).map(str),
}
query_pairs = st.sampled_from(sorted(QUERY_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), mostly(QUERY_VALUES[name], odds=4, other=text))
)
odd_pairs = st.tuples(st.sampled_from(["tenant", "state[]", "", "STATE"]) | text, text)


def test_fuzz_list_jobs(harness: Harness) -> None:
    for _ in range(3):
        harness.submitted_job("acme")
    harness.submitted_job("globex")

    @fuzz_settings(200)
    @given(
        pairs=st.lists(mostly(query_pairs, odds=6, other=odd_pairs), max_size=3),
        raw=st.none()
        | st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60),
        key=st.sampled_from([ACME_KEY, GLOBEX_KEY]),
    )
    def run(pairs: list[tuple[str, str]], raw: str | None, key: str) -> None:
        query = (
            raw if raw is not None else "&".join(f"{q(name)}={q(value)}" for name, value in pairs)
        )
        before = store_state(harness)
        answer = harness.api("GET", "/v1/jobs?" + q(query, safe="=&%;+"), key=key)
        check("list_jobs", answer)
        assert answer.status_code in {200, 422}, answer.status_code
        if answer.status_code == 200:
            listing = answer.get_json()
            assert isinstance(listing["jobs"], list)
            assert all(is_job(job) for job in listing["jobs"])
        assert store_state(harness) == before, "a refused request changed something"

    bucket = harness.s3_keys()
    run()
    assert harness.s3_keys() == bucket


def test_fuzzers_saw_no_5xx() -> None:
    """Runs last in this module: the tally of every fuzzer above."""
    fives = {name: count for name, count in SEEN.items() if name.endswith(".5xx")}
    assert sum(fives.values()) == 0, fives


# ------------------------------------------------------------------ what the fuzzers found
@pytest.mark.parametrize(
    "field",
    [
        {"positivePrompt": "a\ud800b"},
        {"positivePrompt": "\udfff"},
        {"inputs": {"referenceImages": ["https://im.runware.ai/\udc80.jpg"]}},
        {"safety": {"mode": "\ud800"}},
        {"model": "\ud800"},
        {"\ud800": "x"},
    ],
    ids=["prompt", "prompt-low", "reference", "safety", "model", "key"],
)
def test_text_that_is_not_unicode_refused_at_creation(
    harness: Harness, field: dict[str, Any]
) -> None:
    """A lone surrogate (`\\ud800` in JSON) used to be accepted in the prompt; the paid image
    then could not be stored (its prompt hash failed): 500 on every webhook, a lost image."""
    body = {"positivePrompt": PROMPT, "resolution": "1K", **field}
    before = harness.snapshot()
    answer = harness.client.post(
        "/v1/jobs",
        data=encode(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
    )
    check("regression", answer)
    errors = assert_error(answer, 422, "validation_failed")["errors"]
    assert set(errors) == ({"_schema"} if "\ud800" in field else set(field)), errors
    harness.assert_unchanged(before)


def test_untied_provider_error_with_odd_text_is_stored_safely(harness: Harness) -> None:
    """An error entry naming no task used to carry its code and message verbatim into the
    store: a lone surrogate gave a 500, attacker text reached the slot as its error code."""
    job_id, task_uuid = harness.submitted_job()
    answer = harness.webhook(
        task_uuid,
        raw=encode({"errors": [{"code": "\ud800 DROP", "message": "\ud800 ATTACKER\r\nTEXT\x00"}]}),
    )
    check("regression", answer)
    # A code the error table does not know earns a new attempt (within SLOT_MAX_ATTEMPTS).
    assert answer.status_code == 200 and answer.get_json()["results"] == ["retrying"]
    slot = harness.store.get_slot(job_id, 0)
    assert slot is not None and (slot.state, slot.attempt) == ("pending", 2)
    assert slot.error_code == "providerError"
    assert slot.error_message is not None and slot.error_message.isprintable()
