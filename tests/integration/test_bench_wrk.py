"""wrk with the benchmark's request script against a recording server: each listed request is
sent once, the repeated one fills the rest, and a run is ended early when its caller says so."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, request
from werkzeug.serving import BaseWSGIServer, make_server

from infra.bench.receiver import WrkLoad, WrkRequest, run_wrk, write_requests

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]

REPEATED = WrkRequest("/webhooks/runware/repeated?token=t", '{"data": [{"n": 0}]}')


class Recorder:
    """A threaded HTTP server that keeps every POST's path and body."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        app = Flask("recorder")

        @app.post("/<path:path>")
        def record(path: str) -> dict[str, bool]:
            with self.lock:
                self.seen[(request.full_path, request.get_data(as_text=True))] += 1
            return {"ok": True}

        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def count(self, sent: WrkRequest) -> int:
        return self.seen[(sent.path, sent.body)]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    thread.join(5)


def listed_requests(count: int) -> list[WrkRequest]:
    return [WrkRequest(f"/webhooks/runware/t{n}?token=x", f'{{"n": {n}}}') for n in range(count)]


def test_the_repeated_request_alone(recorder: Recorder, tmp_path: Path) -> None:
    repeated = write_requests(tmp_path / "repeated.txt", [REPEATED])
    measured = run_wrk("repeat", recorder.url, repeated, 1, WrkLoad(threads=1, connections=2))
    assert measured.requests > 0
    assert recorder.count(REPEATED) >= measured.requests
    assert sum(recorder.seen.values()) == recorder.count(REPEATED)


def test_listed_requests_go_once_each_across_threads_and_the_run_ends_when_told(
    recorder: Recorder, tmp_path: Path
) -> None:
    listed = listed_requests(60)
    repeated = write_requests(tmp_path / "repeated.txt", [REPEATED])
    fresh = write_requests(tmp_path / "fresh.txt", listed)
    began = time.monotonic()
    measured = run_wrk(
        "fresh", recorder.url, repeated, 20, WrkLoad(threads=2, connections=4), (fresh, 1),
        until=lambda: all(recorder.count(sent) for sent in listed),
    )  # fmt: skip
    assert time.monotonic() - began < 10
    assert measured.seconds < 10
    assert all(recorder.count(sent) == 1 for sent in listed)


def test_one_listed_request_every_nth(recorder: Recorder, tmp_path: Path) -> None:
    listed = listed_requests(5)
    repeated = write_requests(tmp_path / "repeated.txt", [REPEATED])
    fresh = write_requests(tmp_path / "fresh.txt", listed)
    run_wrk("mix", recorder.url, repeated, 1, WrkLoad(threads=1, connections=1), (fresh, 4))
    assert all(recorder.count(sent) == 1 for sent in listed)
    assert recorder.count(REPEATED) >= 3 * len(listed)
