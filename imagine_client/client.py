"""`Client` and `AsyncClient`: the jobs API over httpx, with the same methods, one blocking and
one for asyncio."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from imagine_client import calls
from imagine_client.calls import Call
from imagine_client.errors import Conflict, ConnectionFailed, ImagineError, WaitTimeout
from imagine_client.models import DayStats, Job, Page
from imagine_client.retry import RetryPolicy

USER_AGENT = "imagine-client/0.1"
DEFAULT_TIMEOUT = 30.0
# `wait` polls after 0.5 s, then doubles the pause up to this, back to 0.5 s at each change.
POLL = 0.5
POLL_CAP = 5.0
URL_VARIABLE = "IMAGINE_API_URL"
KEY_VARIABLE = "IMAGINE_API_KEY"


def settings_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The API's base URL and key from IMAGINE_API_URL and IMAGINE_API_KEY."""
    env = os.environ if environ is None else environ
    missing = [name for name in (URL_VARIABLE, KEY_VARIABLE) if not env.get(name)]
    if missing:
        raise ValueError(f"set {' and '.join(missing)} to reach the jobs API")
    return env[URL_VARIABLE], env[KEY_VARIABLE]


class _Base:
    """What both clients hold: where the API is, its key, the retry policy."""

    def __init__(self, base_url: str, api_key: str, retry: RetryPolicy | None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the API's URL must start with http:// or https://, got {base_url!r}")
        if not api_key:
            raise ValueError("an API key is required")
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._api_key = api_key

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _request(self, call: Call) -> tuple[str, dict[str, str]]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **call.headers}
        if call.authorized:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return (call.url if call.absolute else self.base_url + call.url), headers

    def _unreachable(self, call: Call, exc: httpx.TransportError) -> ConnectionFailed:
        # The origin only: a presigned URL's query is a credential.
        url = httpx.URL(call.url if call.absolute else self.base_url)
        origin = f"{url.scheme}://{url.netloc.decode()}"
        reason = str(exc) or type(exc).__name__
        return ConnectionFailed(f"no answer from {origin}: {reason}")


class Client(_Base):
    """The jobs API, blocking. Pass `http` to bring your own `httpx.Client` (its transport,
    proxies, limits); it is then yours to close."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, api_key, retry)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        """A client of the API that IMAGINE_API_URL and IMAGINE_API_KEY name."""
        return cls(*settings_from_env(environ), **options)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        url, headers = self._request(call)
        retry = 0
        while True:
            try:
                response = self._http.request(
                    call.method, url, params=call.params, json=call.body, headers=headers,
                    follow_redirects=False,
                )  # fmt: skip
            except httpx.TransportError as exc:
                delay = self.retry.after_failure(exc, retry, call.replay)
                if delay is None:
                    raise self._unreachable(call, exc) from exc
            else:
                delay = self.retry.after_answer(response, retry)
                if delay is None:
                    return response
            retry += 1
            self._sleep(delay)

    def submit(
        self,
        request: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        metadata: Mapping[str, str] | None = None,
        deadline_seconds: int | None = None,
    ) -> Job:
        """Create a job from a Runware-style request. Without `idempotency_key` (or the
        request's `idempotencyKey`) a new one is made for this call and sent on every retry."""
        call = calls.submit(
            request, idempotency_key=idempotency_key, callback_url=callback_url,
            metadata=metadata, deadline_seconds=deadline_seconds,
        )  # fmt: skip
        return calls.job(self._send(call))

    def get(self, job_id: str) -> Job:
        return calls.job(self._send(calls.get(job_id)))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a job already cancelled is returned as it is."""
        try:
            return calls.job(self._send(calls.cancel(job_id)))
        except Conflict as exc:
            return calls.cancelled(self.get(job_id), exc)

    def wait(
        self,
        job_id: str,
        timeout: float | None = 900.0,
        *,
        poll: float = POLL,
        poll_cap: float = POLL_CAP,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll the job until it ends, and return it; `on_change` sees each new state of the
        job or of one of its images. WaitTimeout after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else self._clock() + timeout
        pause, seen = poll, None
        while True:
            job = self.get(job_id)
            if _progress(job) != seen:
                seen, pause = _progress(job), poll
                if on_change is not None:
                    on_change(job)
            if job.ended:
                return job
            left = None if deadline is None else deadline - self._clock()
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {job_id} is still {job.state} after {timeout} s", job)
            self._sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, poll_cap)

    def list_page(
        self,
        state: str | None = None,
        *,
        cursor: str | None = None,
        limit: int = 50,
        since: str | None = None,
    ) -> Page:
        """One page of the tenant's jobs, newest first; `since` (`1h`, `30m`, `2d` or an ISO
        8601 time) keeps the jobs created from then on."""
        return calls.page(self._send(calls.list_page(state, cursor, limit, since)))

    def list(
        self, state: str | None = None, *, page_size: int = 50, since: str | None = None
    ) -> Iterator[Job]:
        """Every job of the API key's tenant (in `state` and created from `since`, if given),
        newest first, fetched a page of `page_size` at a time as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.list_page(state, cursor=cursor, limit=page_size, since=since)
            yield from page.jobs
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def stats(self, days: int = 7) -> builtins.list[DayStats]:
        """The tenant's counters of the last `days` UTC days (1-35), today first."""
        return calls.day_stats(self._send(calls.stats(days)))

    def download_image(self, job: str | Job, slot: int) -> bytes:
        """The bytes of one stored image: from the slot's presigned URL while it is valid, else
        through `GET /v1/jobs/{id}/images/{slot}`, which redirects to a fresh one."""
        found = self.get(job) if isinstance(job, str) else job
        stored, url = calls.image_source(found, slot)
        if url is not None:
            try:
                return calls.image_bytes(self._send(calls.fetch(url)), stored)
            except ImagineError as exc:
                if exc.status != 403:  # 403: expired or revoked; a fresh URL will do
                    raise
        source = calls.redirect(self._send(calls.image(found.id, slot)), self.base_url)
        if isinstance(source, bytes):
            return source
        return calls.image_bytes(self._send(calls.fetch(source)), stored)

    def download(self, job: str | Job, directory: str | os.PathLike[str]) -> builtins.list[Path]:
        """Save every stored image of the job in `directory` as `<job id>-<slot>.<format>`;
        returns the files written. Images not stored (yet) are skipped."""
        found = self.get(job) if isinstance(job, str) else job
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        saved = []
        for slot in found.slots:
            if slot.stored:
                path = target / calls.file_name(found, slot)
                calls.write_file(path, self.download_image(found, slot.slot))
                saved.append(path)
        return saved


class AsyncClient(_Base):
    """The jobs API for asyncio, with the methods of `Client`. Pass `http` to bring your own
    `httpx.AsyncClient`; it is then yours to close."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, api_key, retry)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """A client of the API that IMAGINE_API_URL and IMAGINE_API_KEY name."""
        return cls(*settings_from_env(environ), **options)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        url, headers = self._request(call)
        retry = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, url, params=call.params, json=call.body, headers=headers,
                    follow_redirects=False,
                )  # fmt: skip
            except httpx.TransportError as exc:
                delay = self.retry.after_failure(exc, retry, call.replay)
                if delay is None:
                    raise self._unreachable(call, exc) from exc
            else:
                delay = self.retry.after_answer(response, retry)
                if delay is None:
                    return response
            retry += 1
            await self._sleep(delay)

    async def submit(
        self,
        request: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        metadata: Mapping[str, str] | None = None,
        deadline_seconds: int | None = None,
    ) -> Job:
        """Create a job; see `Client.submit`."""
        call = calls.submit(
            request, idempotency_key=idempotency_key, callback_url=callback_url,
            metadata=metadata, deadline_seconds=deadline_seconds,
        )  # fmt: skip
        return calls.job(await self._send(call))

    async def get(self, job_id: str) -> Job:
        return calls.job(await self._send(calls.get(job_id)))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a job already cancelled is returned as it is."""
        try:
            return calls.job(await self._send(calls.cancel(job_id)))
        except Conflict as exc:
            return calls.cancelled(await self.get(job_id), exc)

    async def wait(
        self,
        job_id: str,
        timeout: float | None = 900.0,
        *,
        poll: float = POLL,
        poll_cap: float = POLL_CAP,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll the job until it ends; see `Client.wait`."""
        deadline = None if timeout is None else self._clock() + timeout
        pause, seen = poll, None
        while True:
            job = await self.get(job_id)
            if _progress(job) != seen:
                seen, pause = _progress(job), poll
                if on_change is not None:
                    on_change(job)
            if job.ended:
                return job
            left = None if deadline is None else deadline - self._clock()
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {job_id} is still {job.state} after {timeout} s", job)
            await self._sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, poll_cap)

    async def list_page(
        self,
        state: str | None = None,
        *,
        cursor: str | None = None,
        limit: int = 50,
        since: str | None = None,
    ) -> Page:
        return calls.page(await self._send(calls.list_page(state, cursor, limit, since)))

    async def list(
        self, state: str | None = None, *, page_size: int = 50, since: str | None = None
    ) -> AsyncIterator[Job]:
        """Every job of the tenant, newest first; see `Client.list`."""
        cursor: str | None = None
        while True:
            page = await self.list_page(state, cursor=cursor, limit=page_size, since=since)
            for job in page.jobs:
                yield job
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    async def stats(self, days: int = 7) -> builtins.list[DayStats]:
        """The tenant's counters of each UTC day; see `Client.stats`."""
        return calls.day_stats(await self._send(calls.stats(days)))

    async def download_image(self, job: str | Job, slot: int) -> bytes:
        """The bytes of one stored image; see `Client.download_image`."""
        found = await self.get(job) if isinstance(job, str) else job
        stored, url = calls.image_source(found, slot)
        if url is not None:
            try:
                return calls.image_bytes(await self._send(calls.fetch(url)), stored)
            except ImagineError as exc:
                if exc.status != 403:
                    raise
        source = calls.redirect(await self._send(calls.image(found.id, slot)), self.base_url)
        if isinstance(source, bytes):
            return source
        return calls.image_bytes(await self._send(calls.fetch(source)), stored)

    async def download(
        self, job: str | Job, directory: str | os.PathLike[str]
    ) -> builtins.list[Path]:
        """Save every stored image of the job; see `Client.download`."""
        found = await self.get(job) if isinstance(job, str) else job
        target = Path(directory)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        saved = []
        for slot in found.slots:
            if slot.stored:
                path = target / calls.file_name(found, slot)
                data = await self.download_image(found, slot.slot)
                await asyncio.to_thread(calls.write_file, path, data)
                saved.append(path)
        return saved


def _progress(job: Job) -> tuple[str, tuple[str, ...]]:
    """What `wait` reports a change of: the job's state and each image's."""
    return job.state, tuple(slot.state for slot in job.slots)
