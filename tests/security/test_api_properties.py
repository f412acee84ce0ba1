"""Property tests of the jobs API against its own document: schemathesis reads the live
/v1/openapi.json of a receiver served over HTTP on 127.0.0.1 and sends what it generates from
it, valid and invalid. Every answer is documented (status, headers, body), none is a 5xx, every
error is the one JSON shape, and every documented status is seen. Seeded (derandomize) and
bounded, so a run in CI is the same run as on a laptop."""

from __future__ import annotations

import itertools
import json
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from pipeline import urls
from tests.security.conftest import ACME_KEY, ERROR_KEYS, Harness

pytestmark = pytest.mark.security

EXAMPLES = 50  # per operation
SHARED_KEY = "shared-idempotency-key"  # used with many bodies: the first makes a job, others 409
# Statuses no generated request can reach here: the limits behind 429 are off in the security
# harness (their own tests cover them).
NEEDS_SET_UP = {429}
REAL_GETADDRINFO = socket.getaddrinfo
POSITIVE = schemathesis.GenerationMode.POSITIVE
AUTHORIZED = {"Authorization": f"Bearer {ACME_KEY}"}


@pytest.fixture(autouse=True)
def numeric_hosts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generated callback host must not wait on real DNS: names do not resolve, literal
    addresses still do."""

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        return REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(urls.socket, "getaddrinfo", getaddrinfo)


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Hundreds of requests: their access log says nothing the assertions do not."""


@pytest.fixture
def live(harness: Harness) -> Iterator[str]:
    """The harness's app served over HTTP by a real server on a free port of 127.0.0.1."""
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, harness.client.application, threaded=True, request_handler=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def error_shape(ctx: Any, response: Any, case: Any) -> bool:
    """Every 4xx and 5xx is the one JSON error shape, its status the answer's."""
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
        assert body["status"] == response.status_code, body
        assert isinstance(body["code"], str) and body["code"], body
        assert isinstance(body["message"], str) and body["message"], body
        assert isinstance(body["errors"], dict), body
    return True


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    error_shape,
]


def documented_statuses(document: dict[str, Any]) -> dict[str, set[int]]:
    return {
        f"{method.upper()} {path}": {int(status) for status in operation["responses"]}
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }


@dataclass
class Exploration:
    """One run of generated requests against the live API, and the statuses it saw."""

    live: str
    jobs: list[str | None]  # ids to put in job_id: known jobs, and None (as generated)
    request_example: dict[str, Any]
    seen: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    fresh: Iterator[int] = field(default_factory=itertools.count)  # unique idempotency keys

    def send(self, case: Any, headers: dict[str, str] | None) -> Any:
        """One request as generated, with the tenant's key unless `headers` is None (then the
        generated Authorization, a random bearer token); its answer checked and recorded."""
        response = case.call(base_url=self.live, headers=headers)
        self.seen[case.operation.label].add(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)
        return response

    def explore(self, operation: Any) -> None:
        """EXAMPLES requests generated from the operation's documentation, two valid for one
        invalid."""

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=st.one_of(
                operation.as_strategy(),
                operation.as_strategy(),
                operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
            ),
            authorized=st.sampled_from([True, True, True, False]),
            job=st.sampled_from(self.jobs),
            slot=st.sampled_from([0, None]),
            key=st.sampled_from([None, SHARED_KEY, "replay"]),
            example=st.sampled_from([True, True, False]),
        )
        def run(
            case: Any,
            authorized: bool,
            job: str | None,
            slot: int | None,
            key: str | None,
            example: bool,
        ) -> None:
            headers = AUTHORIZED if authorized else None
            if case.meta.generation.mode != POSITIVE:
                # Sent as generated: what was made invalid must stay so. With the tenant's key
                # unless the invalid part is a header (a missing Authorization, for one).
                negative_header = case.meta.is_negative_at(ParameterLocation.HEADER)
                self.send(case, None if negative_header else headers)
                return
            # Known jobs (running, stored, another tenant's) as well as generated ids, so the
            # answers about an existing job are reached too.
            if job is not None and "job_id" in case.path_parameters:
                case.path_parameters["job_id"] = job
            if slot is not None and "slot" in case.path_parameters:
                case.path_parameters["slot"] = slot
            if case.operation.label == "POST /v1/jobs":
                self.create(case, headers, key, example)
            else:
                self.send(case, headers)

        run()

    def create(
        self, case: Any, headers: dict[str, str] | None, key: str | None, example: bool
    ) -> None:
        # The document's own example request with the generated prompt: a generated body
        # rarely has one of the model's sizes, and jobs are to be made, replayed and refused
        # as replays of another body.
        if example and isinstance(case.body, dict):
            case.body = {**self.request_example, "positivePrompt": case.body["positivePrompt"]}
        if key is not None:
            value = SHARED_KEY if key == SHARED_KEY else f"replay-{next(self.fresh)}"
            case.headers = {**(case.headers or {}), "Idempotency-Key": value}
        response = self.send(case, headers)
        if key is not None and response.status_code == 202:
            # The same request again is the same job, said to be a replay.
            again = self.send(case, headers)
            assert again.status_code == 200, again.text
            assert again.headers["idempotent-replayed"] == ["true"]  # keys lower-cased
            assert again.json()["id"] == response.json()["id"]

    def send_what_generation_cannot(self) -> None:
        """Bodies a generated request never has: not JSON, too big, of another media type."""
        for status, request in {
            400: {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            413: {"json": {"positivePrompt": "x" * 70_000}},
            415: {"content": b"{}", "headers": {"Content-Type": "text/plain"}},
        }.items():
            headers = {**AUTHORIZED, **request.pop("headers", {})}
            answer = httpx.post(f"{self.live}/v1/jobs", headers=headers, **request)
            assert answer.status_code == status, answer.text
            assert set(answer.json()) == ERROR_KEYS
            self.seen["POST /v1/jobs"].add(status)


def test_the_api_keeps_to_its_document_whatever_it_is_sent(harness: Harness, live: str) -> None:
    running, _ = harness.submitted_job()
    stored, _ = harness.succeeded_job()
    others, _ = harness.submitted_job(tenant="globex")
    schema = schemathesis.openapi.from_url(f"{live}/v1/openapi.json")
    document = schema.raw_schema
    exploration = Exploration(
        live,
        jobs=[stored, running, None, others],
        request_example=document["components"]["schemas"]["JobRequest"]["examples"][0],
    )
    for result in schema.get_all_operations():
        exploration.explore(result.ok())
    exploration.send_what_generation_cannot()

    seen = exploration.seen
    print("statuses seen:", {label: sorted(statuses) for label, statuses in seen.items()})
    for label, statuses in documented_statuses(document).items():
        assert seen[label] <= statuses, (label, seen[label] - statuses)
        assert statuses - NEEDS_SET_UP <= seen[label], (label, statuses - seen[label])
