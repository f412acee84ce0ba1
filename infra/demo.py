"""The demo: the model page's examples through a running stack, their images saved and reported."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pipeline.http import RetryOnDisconnectTransport
from pipeline.models import JOB_TERMINAL, JobState, SlotState

if TYPE_CHECKING:
    from infra.stack import LocalStack

EXAMPLES_PATH = Path(__file__).resolve().parent / "fixtures" / "model-page-examples.json"
# The model page's prices (USD): each image, plus each reference image of an edit.
PRICE_PER_IMAGE = 0.07
PRICE_PER_REFERENCE_IMAGE = 0.002
# The states in which a job produced images worth downloading.
WITH_IMAGES = frozenset({JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED})


@dataclass
class JobRun:
    """One submitted example and what became of it."""

    example: int
    request: dict[str, Any]
    job_id: str | None = None
    job: dict[str, Any] | None = None
    error: str | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.error is not None and self.job is None:
            return "not submitted"
        return str((self.job or {}).get("state", "unknown"))

    @property
    def done(self) -> bool:
        if self.job_id is None:
            return True
        job = self.job or {}
        if job.get("state") not in JOB_TERMINAL:
            return False
        # The manifest is written last; wait for its key on jobs that produced images.
        return job.get("state") not in WITH_IMAGES or bool(job.get("manifestKey"))


def load_examples(path: Path = EXAMPLES_PATH) -> list[dict[str, Any]]:
    """The `request` objects of the model page's examples."""
    return [dict(entry["request"]) for entry in json.loads(path.read_text(encoding="utf-8"))]


def reference_count(request: Mapping[str, Any]) -> int:
    """How many reference images a request sends (`inputs.referenceImages`, or the legacy field)."""
    inputs = request.get("inputs")
    found = inputs.get("referenceImages") if isinstance(inputs, Mapping) else None
    if found is None:
        found = request.get("referenceImages")
    return len(found) if isinstance(found, list) else 0


def estimate_cost(requests: Sequence[Mapping[str, Any]]) -> tuple[int, float]:
    """The images the requests ask for and what Runware charges for them, by the model page."""
    images = 0
    cost = 0.0
    for request in requests:
        count = int(request.get("numberResults") or 1)
        images += count
        cost += count * (PRICE_PER_IMAGE + PRICE_PER_REFERENCE_IMAGE * reference_count(request))
    return images, round(cost, 6)


def _progress(runs: Sequence[JobRun], elapsed: float) -> str:
    parts = []
    for run in runs:
        slots = (run.job or {}).get("slots") or []
        stored = sum(1 for slot in slots if slot.get("state") == SlotState.STORED)
        name = (run.job_id or f"example-{run.example}")[:8]
        parts.append(f"{name} {run.state} {stored}/{len(slots) or '?'}")
    return f"[{elapsed:5.1f}s] " + " | ".join(parts)


def run_examples(
    stack: LocalStack,
    requests: Sequence[dict[str, Any]],
    out_dir: Path,
    timeout: float,
    *,
    out: Any = sys.stdout,
) -> list[JobRun]:
    """Submit requests through the jobs API, wait for each job, and download its images."""
    runs = [JobRun(index, request) for index, request in enumerate(requests)]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(
        base_url=stack.urls["RECEIVER_URL"],
        headers=headers,
        timeout=30,
        transport=RetryOnDisconnectTransport(),
    ) as client:
        for run in runs:
            key = f"example-{run.request.get('taskUUID') or run.example}"
            try:
                response = client.post(
                    "/v1/jobs", json=run.request, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError as exc:
                run.error = f"POST /v1/jobs failed: {exc}"
                continue
            if response.status_code != 202:
                run.error = f"POST /v1/jobs answered {response.status_code}: {response.text}"
                continue
            run.job = response.json()
            run.job_id = str(run.job["id"])
            print(f"submitted example {run.example} as job {run.job_id}", file=out, flush=True)
        _wait_for_jobs(stack, client, runs, timeout, out)
    for run in runs:
        if run.job is not None and run.state in WITH_IMAGES:
            try:
                run.files = download_images(stack, run.job, out_dir)
            except Exception as exc:
                run.error = f"download failed: {exc}"
    return runs


def _wait_for_jobs(
    stack: LocalStack, client: httpx.Client, runs: Sequence[JobRun], timeout: float, out: Any
) -> None:
    started = time.monotonic()
    deadline = started + timeout
    tty = hasattr(out, "isatty") and out.isatty()
    last_line = ""
    while True:
        stack.check()
        for run in runs:
            if not run.done:
                _refresh(client, run)
        last_line = _show_progress(runs, started, last_line, tty, out)
        if all(run.done for run in runs):
            break
        if time.monotonic() >= deadline:
            for run in runs:
                if not run.done:
                    run.error = (run.error or "") + f" not finished after {timeout:.0f}s"
            break
        time.sleep(0.5)
    if tty:
        print(file=out, flush=True)


def _refresh(client: httpx.Client, run: JobRun) -> None:
    """Read the job of run again through the jobs API."""
    try:
        response = client.get(f"/v1/jobs/{run.job_id}")
    except httpx.HTTPError as exc:
        run.error = f"GET /v1/jobs/{run.job_id} failed: {exc}"
        return
    if response.status_code == 200:
        run.job = response.json()
        run.error = None
    else:
        run.error = f"GET /v1/jobs/{run.job_id} answered {response.status_code}"


def _show_progress(
    runs: Sequence[JobRun], started: float, last_line: str, tty: bool, out: Any
) -> str:
    """Print the progress line (in place on a terminal, else when it changed); return it."""
    line = _progress(runs, time.monotonic() - started)
    if tty:
        print(f"\r{line}\x1b[K", end="", file=out, flush=True)
    elif line.split("] ", 1)[1] != last_line.split("] ", 1)[-1]:
        print(line, file=out, flush=True)
    return line


def download_images(stack: LocalStack, job: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Save the job's final images as out_dir/<jobId>-<slot>.<ext>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    client = stack.s3_client()
    saved = []
    for slot in job.get("slots") or []:
        key = slot.get("finalKey")
        if not key:
            continue
        extension = key.rsplit(".", 1)[-1]
        target = out_dir / f"{job['id']}-{slot['slot']}.{extension}"
        body = client.get_object(Bucket=stack.config.bucket, Key=key)["Body"].read()
        target.write_bytes(body)
        saved.append(target)
    return saved


def _describe_image(path: Path) -> str:
    try:
        from PIL import Image  # Pillow only describes the file; the pipeline verified it

        with Image.open(path) as image:
            return f"{image.width}x{image.height} {image.format}"
    except Exception as exc:
        return f"unreadable: {exc}"


def report(runs: Sequence[JobRun], bucket: str, out: Any = sys.stdout) -> bool:
    """Print each job's outcome; True when every job succeeded."""
    all_ok = True
    for run in runs:
        ok = run.state == JobState.SUCCEEDED and run.error is None and bool(run.files)
        all_ok = all_ok and ok
        _report_run(run, bucket, out)
    out.flush()
    return all_ok


def _report_run(run: JobRun, bucket: str, out: Any) -> None:
    job = run.job or {}
    title = run.job_id or f"example {run.example}"
    print(f"job {title}: {run.state}", file=out)
    if job.get("clientTaskUUID"):
        print(f"  clientTaskUUID {job['clientTaskUUID']}", file=out)
    if job.get("cost") is not None:
        print(f"  cost {job['cost']}", file=out)
    if job.get("reason"):
        print(f"  reason: {job['reason']}", file=out)
    for slot in job.get("slots") or []:
        print(_slot_line(slot, bucket), file=out)
    if job.get("manifestKey"):
        print(f"  manifest: s3://{bucket}/{job['manifestKey']}", file=out)
    for path in run.files:
        print(f"  saved {path} ({_describe_image(path)})", file=out)
    if run.error:
        print(f"  error: {run.error.strip()}", file=out)


def _slot_line(slot: Mapping[str, Any], bucket: str) -> str:
    where = f"s3://{bucket}/{slot['finalKey']}" if slot.get("finalKey") else "-"
    line = f"  slot {slot.get('slot')}: {slot.get('state')} {where}"
    if slot.get("seed") is not None:
        line += f" seed={slot['seed']}"
    if slot.get("error"):
        error = slot["error"]
        line += f" error={error.get('code')}: {error.get('message')}"
    return line
