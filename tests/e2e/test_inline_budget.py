"""The webhook is answered inside Runware's ~5 s budget when S3 is slow: inline promotion stops
at INLINE_PROMOTE_BUDGET_SECONDS and a worker stores the image, once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from infra import servers, supervise
from pipeline.signing import webhook_token
from tests.e2e.conftest import Pipeline, check_stored_job

pytestmark = pytest.mark.e2e

S3_DELAY_SECONDS = 3.0


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 that holds every byte coming back from upstream for `delay`
    seconds (requests go through at once), and records the request lines it forwards."""

    def __init__(self, upstream: str, delay: float) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay = delay
        self.requests: list[str] = []
        self.port = supervise.free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self._forward(reader, up_writer, record=True),
                self._delayed(up_reader, writer),
                return_exceptions=True,
            )
        finally:
            for side in (writer, up_writer):
                side.close()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        while chunk := await reader.read(65536):
            first = chunk.split(b"\r\n", 1)[0].decode("latin-1")
            if record and first.split(" ", 1)[0] in {"GET", "HEAD", "PUT", "POST", "DELETE"}:
                self.requests.append(first)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        while True:
            chunk = await reader.read(65536)
            await queue.put((time.monotonic() + self.delay, chunk))
            if not chunk:
                break
        await sender


@pytest.fixture
def slow_receiver(stack: Pipeline, s3_server: str, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A second receiver whose S3 answers every request 3 s late."""
    proxy = DelayingProxy(s3_server, S3_DELAY_SECONDS)
    proxy.start()
    env = {**stack.env, "S3_ENDPOINT_URL": proxy.url}
    service = servers.start_receiver(
        tmp_path / "slow", env, supervise.free_port(), log_dir=tmp_path / "logs"
    )
    try:
        yield service.url or "", proxy
    finally:
        service.stop()
        proxy.stop()


def wait_for(condition: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_the_webhook_answers_in_time_when_s3_is_slow_and_the_worker_stores_once(
    stack: Pipeline, slow_receiver: tuple[str, Any], s3_client: Any
) -> None:
    receiver_url, proxy = slow_receiver
    stack.emulator(drop_webhook_rate=1.0)  # the upload lands; the webhook is ours to send
    created = stack.submit({"positivePrompt": "a slow bucket", "resolution": "1K"})
    job_id = created["id"]
    with stack.client() as client:
        task_uuid = wait_for(
            lambda: client.get(f"/v1/jobs/{job_id}").json()["slots"][0]["taskUUID"]
        )

    def item() -> dict[str, Any] | None:
        detail = httpx.get(f"{stack.emulator_url}/_emulator/tasks/{task_uuid}", timeout=10).json()
        if "slots" not in detail:
            return None  # the taskUUID is stored before the request reaches the emulator
        found: dict[str, Any] | None = detail["slots"][0]["item"]
        return found

    body = {"data": [wait_for(item)]}
    staged = f"staging/{job_id}/{task_uuid}"
    wait_for(lambda: s3_client.list_objects_v2(Bucket=stack.bucket, Prefix=staged).get("KeyCount"))
    token = webhook_token(stack.env["WEBHOOK_SECRETS"].split(",")[0], task_uuid)
    started = time.monotonic()
    answer = httpx.post(
        f"{receiver_url}/webhooks/runware/{task_uuid}",
        params={"token": token},
        json=body,
        timeout=30,
    )
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == ["received"]
    assert took < 3.5, f"the webhook took {took:.2f} s"  # budget 2 s; Runware retries after ~5 s
    job = stack.wait(job_id, timeout=60)
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")  # one object at its key
    # The slow receiver only looked (a ranged GET, its head and first bytes, that timed out);
    # the worker wrote the image.
    assert any(line.startswith("GET ") for line in proxy.requests), proxy.requests
    assert not [line for line in proxy.requests if line.startswith(("PUT ", "POST "))]
