"""Jobs through the whole pipeline as a backend service sends them, read back from the job store."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from infra.supervise import poll_until
from pipeline.http import RetryOnDisconnectTransport
from pipeline.models import Job, JobState
from pipeline.store import RedisJobStore

SIDE = 1024
POSTERS = 4


class PipelineError(RuntimeError):
    """Jobs did not all succeed, or did not end in time."""


@dataclass(frozen=True)
class Finished:
    """A batch of jobs read back once all of them ended."""

    began: float
    jobs: list[Job]

    @property
    def images(self) -> int:
        return sum(len(job.slots) for job in self.jobs)

    @property
    def ended(self) -> float:
        """When the last job became terminal: its manifest is written before that transition."""
        return max(job.updated_at for job in self.jobs)


def job_body(n: int, per_job: int) -> dict[str, object]:
    return {
        "positivePrompt": f"benchmark image {n}",
        "width": SIDE,
        "height": SIDE,
        "outputFormat": "JPG",
        "numberResults": per_job,
        "deadlineSeconds": 1800,
    }


def api_client(receiver_url: str, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=receiver_url,
        timeout=30,
        transport=RetryOnDisconnectTransport(),
        headers={"Authorization": f"Bearer {api_key}"},
    )


def post_job(client: httpx.Client, n: int, per_job: int) -> str:
    answer = client.post("/v1/jobs", json=job_body(n, per_job))
    if answer.status_code != 202:
        raise PipelineError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:300]}")
    return str(answer.json()["id"])


def post_jobs(client: httpx.Client, jobs: int, per_job: int) -> list[str]:
    """POST jobs from a few threads at once, so enqueueing is never what the round waits on."""
    with ThreadPoolExecutor(POSTERS) as pool:
        return list(pool.map(lambda n: post_job(client, n, per_job), range(jobs)))


def post_paced(client: httpx.Client, jobs: int, per_job: int, per_second: float) -> list[str]:
    """POST jobs one after another, job n at n / per_second seconds from the start."""
    began = time.monotonic()
    ids = []
    for n in range(jobs):
        pause = began + n / per_second - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        ids.append(post_job(client, n, per_job))
    return ids


def wait_for_jobs(
    store: RedisJobStore, ids: Iterable[str], began: float, timeout: float
) -> Finished:
    """Wait until no job is active (one ZCARD per poll), then read each job once."""
    try:
        poll_until(lambda: store.active_count() == 0, timeout, "every benchmark job to end")
    except Exception as exc:
        raise PipelineError(f"{store.active_count()} jobs still active: {exc}") from exc
    jobs = [store.get_job(job_id) for job_id in ids]
    missing = [job for job in jobs if job is None]
    if missing:
        raise PipelineError(f"{len(missing)} jobs vanished from the job store")
    found = [job for job in jobs if job is not None]
    failed = [job for job in found if job.state != JobState.SUCCEEDED]
    if failed:
        sample = ", ".join(f"{job.id}={job.state} ({job.reason})" for job in failed[:3])
        raise PipelineError(f"{len(failed)} of {len(found)} jobs did not succeed: {sample}")
    return Finished(began, found)


def run_jobs(
    client: httpx.Client, store: RedisJobStore, images: int, per_job: int, timeout: float
) -> Finished:
    """images (rounded up to whole jobs) as fast as the pipeline takes them."""
    began = time.time()
    ids = post_jobs(client, -(-images // per_job), per_job)
    return wait_for_jobs(store, ids, began, timeout)
