"""Slow clients: 20 connections trickling a body leave /healthz answering and are closed in time."""

from __future__ import annotations

import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from infra import servers, supervise
from pipeline.signing import webhook_token

# A real receiver under gunicorn: slow clients are a matter of the server, not of the app.
pytestmark = [pytest.mark.security, pytest.mark.e2e]

SLOW_CLIENTS = 20
BODY_SECONDS = 5  # RECEIVER_BODY_TIMEOUT_SECONDS of this test's receiver
PROBE_BOUND = 2.0  # seconds /healthz may take while the slow clients hang


class SlowClient(threading.Thread):
    """POSTs a 100 kB webhook body one byte a second until the server closes the connection."""

    def __init__(self, port: int, token_for: Callable[[str], str]) -> None:
        super().__init__(daemon=True)
        self.port = port
        task_uuid = str(uuid.uuid4())
        self.path = f"/webhooks/runware/{task_uuid}?token={token_for(task_uuid)}"
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.closed_by_server = threading.Event()
        self.answer = b""

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(
                f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
            )
            self.connected.set()
            while not self.stop.is_set():
                readable, _, _ = select.select([sock], [], [], 1.0)
                try:
                    if not readable:
                        sock.sendall(b" ")
                        continue
                    chunk = sock.recv(65536)
                except OSError:  # reset or broken pipe: the server closed it
                    chunk = b""
                if not chunk:
                    self.closed_by_server.set()
                    return
                self.answer += chunk

    def status(self) -> int | None:
        """The status of the answer received before the close, if one arrived."""
        if not self.answer.startswith(b"HTTP/1.1 "):
            return None
        return int(self.answer[9:12])


@pytest.fixture
def receiver(
    tmp_path: Path,
    redis_server: str,
    s3_server: str,
    s3_bucket: str,
    emulator_service: supervise.Service,
    emulator_api_key: str,
) -> Iterator[tuple[supervise.Service, dict[str, str]]]:
    """A receiver of this test's own, with a short body deadline (the default is 30 s)."""
    assert emulator_service.url is not None
    port = supervise.free_port()
    env = servers.pipeline_env(
        redis_server,
        s3_server,
        s3_bucket,
        emulator_service.url,
        emulator_api_key,
        port,
        extra={"RECEIVER_BODY_TIMEOUT_SECONDS": str(BODY_SECONDS)},
    )
    service = servers.start_receiver(tmp_path / "receiver", env, port, log_dir=tmp_path / "logs")
    yield service, env
    service.stop()


def test_slow_clients_leave_healthz_answering_and_are_closed(
    receiver: tuple[supervise.Service, dict[str, str]],
) -> None:
    service, env = receiver
    assert service.port is not None and service.url is not None
    secret = env["WEBHOOK_SECRETS"].split(",")[0]
    # Half are turned away before their body is read (bad token), half get their body read by the
    # view (a valid token for a task nobody knows), so both the drain and the read are bounded.
    half = SLOW_CLIENTS // 2
    clients = [SlowClient(service.port, lambda _: "x") for _ in range(half)]
    clients += [
        SlowClient(service.port, lambda task: webhook_token(secret, task))
        for _ in range(SLOW_CLIENTS - half)
    ]
    for client in clients:
        client.start()
    try:
        for client in clients:
            assert client.connected.wait(10), "a slow client could not connect"
        latencies: list[float] = []
        probes_while_all_hang = 0
        deadline = time.monotonic() + 60 + BODY_SECONDS
        while not all(client.closed_by_server.is_set() for client in clients):
            assert time.monotonic() < deadline, "the server left slow connections open"
            all_hanging = not any(client.closed_by_server.is_set() for client in clients)
            began = time.monotonic()
            response = httpx.get(f"{service.url}/healthz", timeout=PROBE_BOUND)
            latencies.append(time.monotonic() - began)
            assert response.status_code == 200
            assert latencies[-1] < PROBE_BOUND, latencies
            probes_while_all_hang += all_hanging
            # Probing cadence, not synchronisation: the loop ends on the clients' state.
            clients[0].stop.wait(0.25)
        assert probes_while_all_hang >= 3, latencies
        # Answered before the drain began: each of these saw its 401.
        assert [client.status() for client in clients[:half]] == [401] * half
        # The 408 goes out just before the close; a byte in flight may turn that close into a
        # reset that eats the answer, so only some need to show it, and none anything else.
        assert {client.status() for client in clients[half:]} - {None} == {408}
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(5)
