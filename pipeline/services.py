"""The use cases: create a job, submit its images, accept results, promote, finish, reconcile."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from marshmallow import ValidationError

from pipeline.catalog import FORMAT_CONTENT_TYPES, get_model
from pipeline.config import Settings
from pipeline.errors import (
    Conflict,
    ImageRejected,
    NotFound,
    ProviderError,
    RequestInvalid,
    StorageError,
)
from pipeline.imaging import ImageInfo, check_complete, inspect_image
from pipeline.interfaces import Dispatcher, ObjectStorage
from pipeline.runware import RunwareClient, classify
from pipeline.schemas import (
    ProviderResult,
    check_outgoing_task,
    load_job_request,
    parse_provider_body,
    untied_error_result,
)
from pipeline.signing import sign_callback, webhook_token
from pipeline.storage import KeyLayout
from pipeline.store import JOB_TERMINAL, SLOT_OPEN, Job, RedisJobStore, Slot
from pipeline.urls import UnsafeURL, check_outbound_url, pinned_request

log = logging.getLogger(__name__)

GENERATION_FIELDS = ("model", "positivePrompt", "width", "height", "resolution", "numberResults",
                     "outputFormat", "outputQuality", "inputs", "safety")
HEADER_BYTES = 256 * 1024
MAX_TASKS_PER_REQUEST = 20
AWAITING_RESULT = ("pending", "submitted")
# S3 refuses an object whose user metadata (names and values) exceeds 2 KB.
S3_METADATA_LIMIT = 2048
PROVIDER_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
CIRCUIT_FIELDS = ("state", "code", "message", "opened_at", "probe_at")


def is_job_id(value: str) -> bool:
    """Job ids are the canonical text of a UUID; anything else never reaches a key name."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def clean_text(value: str | None, limit: int) -> str:
    """Provider text made safe to store and show: printable characters only, bounded."""
    return "".join(char if char.isprintable() else " " for char in (value or ""))[:limit]


def provider_code(code: str | None, http_status: int | None = None) -> str:
    """A provider's error code as an identifier; anything else is not repeated."""
    if code and PROVIDER_CODE.fullmatch(code):
        return code
    return f"http_{http_status}" if http_status else "providerError"


def paused_reason(code: str | None) -> str:
    # Every tenant's waiting job shows this: it names the code, never the provider's text.
    return f"waiting: submission paused by the provider ({provider_code(code)})"


def metadata_value(value: str | None, limit: int) -> str:
    """A value S3 accepts in object metadata: printable ASCII only (no CR or LF), bounded."""
    return "".join(char if 32 <= ord(char) < 127 else "?" for char in (value or ""))[:limit]


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(len(key) + len(value) for key, value in metadata.items())


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def canonical_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


@dataclass
class ResultOutcome:
    job_id: str
    slot: int
    outcome: str  # received | failed | retrying | discarded | duplicate | stale | processing


@dataclass
class JobService:
    """Every use case of the pipeline, over the store, the bucket, Runware and the dispatcher."""

    settings: Settings
    store: RedisJobStore
    storage: ObjectStorage
    dispatcher: Dispatcher
    runware: RunwareClient | None = None
    http: httpx.Client | None = None
    layout: KeyLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = KeyLayout(self.settings.s3_prefix)

    # ------------------------------------------------------------------ enqueue
    def create_job(self, body: Any, tenant: str, idempotency_key: str | None = None
                   ) -> tuple[Job, bool]:
        """Validate a request and record a queued job; returns (job, created)."""
        try:
            request = load_job_request(body, self.settings.runware_model)
        except ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            raise RequestInvalid("the job request is invalid", messages) from None
        body_key = request.get("idempotencyKey")
        if idempotency_key and body_key and idempotency_key != body_key:
            raise RequestInvalid("the job request is invalid", {
                "idempotencyKey": ["differs from the Idempotency-Key header"]})
        key = idempotency_key or body_key
        if request.get("callbackURL"):
            if not self.settings.callback_secret:
                raise RequestInvalid("the job request is invalid", {"callbackURL": [
                    "callbacks are off: this deployment has no CALLBACK_SECRET to sign them"]})
            try:
                check_outbound_url(request["callbackURL"], allowed_hosts=None,
                                   allow_private=self.settings.allow_private_urls)
            except UnsafeURL as exc:
                raise RequestInvalid("the job request is invalid",
                                     {"callbackURL": [str(exc)]}) from None
        deadline = min(request.get("deadlineSeconds") or self.settings.default_deadline_seconds,
                       self.settings.max_deadline_seconds)
        now = time.time()
        params = {name: request[name] for name in GENERATION_FIELDS if name in request}
        job = Job(
            id=str(uuid.uuid4()), tenant=tenant, state="queued", model=params["model"],
            params=params, slot_count=params["numberResults"],
            output_format=params["outputFormat"], created_at=now, updated_at=now,
            deadline_at=now + deadline, client_task_uuid=request.get("taskUUID"),
            idempotency_key=key, callback_url=request.get("callbackURL"),
            metadata=request.get("metadata") or {},
        )
        body_hash = canonical_hash({k: v for k, v in request.items() if k != "idempotencyKey"})
        job_id, stored_hash = self.store.create_job(job, body_hash)
        if stored_hash is not None:
            if stored_hash != body_hash:
                raise Conflict("this idempotency key was used with another request body",
                               {"idempotencyKey": [key]})
            existing = self.store.get_job(job_id)
            if existing is None:
                raise NotFound(f"job {job_id} has expired")
            return existing, False
        self.dispatcher.submit_job(job.id)
        log.info("job created", extra={"job_id": job.id, "tenant": tenant,
                                       "images": job.slot_count})
        created = self.store.get_job(job.id)
        assert created is not None
        return created, True

    def create_refused_job(self, body: Any, tenant: str, errors: dict[str, Any],
                           idempotency_key: str | None = None) -> Job:
        """Record a request a worker refused as a failed job that carries the errors."""
        now = time.time()
        job = Job(
            id=str(uuid.uuid4()), tenant=tenant, state="queued",
            model=self.settings.runware_model, params={}, slot_count=0, output_format="JPG",
            created_at=now, updated_at=now, deadline_at=now, idempotency_key=idempotency_key,
            reason="validation_failed: " + json.dumps(errors, sort_keys=True)[:2000],
        )
        job_id, _ = self.store.create_job(job, canonical_hash(body) if isinstance(body, dict)
                                          else canonical_hash(repr(body)))
        self.finish_job(job_id)
        refused = self.store.get_job(job_id)
        assert refused is not None
        return refused

    def get_job(self, job_id: str, tenant: str | None = None) -> Job:
        if not is_job_id(job_id):
            raise NotFound(f"no job {job_id[:64]!r}: job ids are UUIDs")
        job = self.store.get_job(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise NotFound(f"no job {job_id}")
        return job

    # ------------------------------------------------------------------ submit
    def circuit(self) -> dict[str, str]:
        raw = self.store.redis.hgetall(f"{self.store.ns}:circuit")
        return {str(k): str(v) for k, v in raw.items()}

    def open_circuit(self, error: ProviderError) -> None:
        key = f"{self.store.ns}:circuit"
        opened = self.store.redis.hsetnx(key, "opened_at", repr(time.time()))
        self.store.redis.hset(key, mapping={
            "state": "open", "code": provider_code(error.provider_code, error.http_status),
            "message": clean_text(error.message, 500),
            "probe_at": repr(time.time() + self.settings.circuit_probe_seconds),
        })
        if opened:
            log.error("circuit opened: submission paused", extra={
                "code": error.provider_code, "http_status": error.http_status})

    def reset_circuit(self) -> None:
        self.store.redis.delete(f"{self.store.ns}:circuit")
        log.warning("circuit closed: submission resumes")

    def _runware(self) -> RunwareClient:
        if self.runware is None:
            self.runware = RunwareClient.from_settings(self.settings)
        return self.runware

    def submit_job(self, job_id: str, *, probe: bool = False) -> str:
        """Send every pending image slot of a job to Runware; safe to run any number of times.

        Returns what happened: done, paused, waiting, submitted or expired.
        """
        job = self.store.get_job(job_id)
        if job is None or job.terminal:
            return "done"
        if time.time() >= job.deadline_at:
            self.expire_job(job_id)
            return "expired"
        circuit = self.circuit()
        if circuit.get("state") == "open" and not probe:
            self.store.set_job_fields(job_id, reason=paused_reason(circuit.get("code")))
            return "paused"
        self.store.transition_job(job_id, ["queued"], "running")
        pending = [slot for slot in job.slots if slot.state == "pending"]
        if not pending:
            self.finish_job(job_id)
            return "done"
        uuids: dict[str, Slot] = {}
        for slot in pending:
            task_uuid = self.store.mint_task_uuid(job_id, slot.slot, slot.attempt,
                                                  str(uuid.uuid4()))
            if task_uuid:
                uuids[task_uuid] = slot
        api_key = self.settings.require_runware_key()
        lease_ttl = (max(60.0, job.deadline_at - time.time())
                     + self.settings.upload_url_margin_seconds)
        granted = self.store.acquire_leases(api_key, list(uuids)[:MAX_TASKS_PER_REQUEST],
                                            self.settings.runware_max_in_flight, lease_ttl)
        if len(granted) < len(uuids):
            # Woken as soon as a lease is given back; the delayed nudge covers a lost wake-up.
            self.store.set_job_fields(job_id, reason="waiting: Runware in-flight budget is full")
            self.store.wait_for_budget(api_key, job_id)
            self.dispatcher.submit_job(job_id, countdown=self.settings.budget_wait_seconds)
        if not granted:
            return "waiting"
        tasks = [self._task_payload(job, uuids[task_uuid], task_uuid) for task_uuid in granted]
        try:
            outcomes = self._runware().submit(tasks)
        except ProviderError as exc:
            if exc.kind == ProviderError.ACCOUNT:
                self._release(granted)
                self.open_circuit(exc)
                self.store.set_job_fields(job_id, reason=paused_reason(
                    provider_code(exc.provider_code, exc.http_status)))
                return "paused"
            if exc.kind == ProviderError.PERMANENT:
                self._release(granted)
                for task_uuid in granted:
                    self._fail_slot(job_id, uuids[task_uuid].slot, task_uuid,
                                    exc.provider_code or "rejected", exc.message)
                self.finish_job(job_id)
                return "submitted"
            raise  # transient: the outcome is unknown; the retry reuses these taskUUIDs
        if probe and self.circuit().get("state") == "open":
            self.reset_circuit()
        now = time.time()
        for task_uuid, outcome in outcomes.items():
            slot = uuids[task_uuid]
            if outcome.accepted:
                self.store.transition_slot(job_id, slot.slot, ["pending"], "submitted",
                                           task_uuid=task_uuid, submitted_at=repr(now))
                if outcome.results:
                    self.record_results(task_uuid, outcome.results)
                continue
            error = outcome.error
            assert error is not None
            self._release([task_uuid])
            if error.kind == ProviderError.PERMANENT:
                self._fail_slot(job_id, slot.slot, task_uuid, error.provider_code or "rejected",
                                error.message)
            elif error.kind == ProviderError.ACCOUNT:
                self.open_circuit(error)
            else:
                self.dispatcher.submit_job(job_id, countdown=self._backoff(1, error.retry_after))
        self.store.set_job_fields(job_id, reason=None)
        self.finish_job(job_id)
        return "submitted"

    def _release(self, task_uuids: list[str]) -> None:
        """Give in-flight leases back and wake as many jobs waiting for the budget."""
        api_key = self.settings.runware_api_key.reveal()
        if not api_key:
            return
        freed = self.store.release_leases(api_key, task_uuids)
        for waiting in self.store.pop_budget_waiters(api_key, freed):
            self.dispatcher.submit_job(waiting)

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.settings.retry_backoff_cap_seconds, 2 ** attempt)
        if retry_after is not None:
            base = min(self.settings.retry_backoff_cap_seconds, max(base, retry_after))
        return float(base)

    def webhook_url(self, task_uuid: str) -> str:
        token = webhook_token(self.settings.require_webhook_secrets()[0], task_uuid)
        return (f"{self.settings.public_base_url}/webhooks/runware/{task_uuid}"
                f"?token={quote(token)}")

    def _task_payload(self, job: Job, slot: Slot, task_uuid: str) -> dict[str, Any]:
        remaining = max(60, int(job.deadline_at - time.time()))
        expires = remaining + self.settings.upload_url_margin_seconds
        payload: dict[str, Any] = {
            "taskType": "imageInference", "taskUUID": task_uuid, "model": job.model,
            "positivePrompt": job.params["positivePrompt"],
        }
        for name in ("width", "height", "resolution", "outputQuality", "inputs", "safety"):
            if name in job.params:
                payload[name] = job.params[name]
        payload.update({
            "outputFormat": job.output_format, "outputType": "URL", "numberResults": 1,
            "deliveryMethod": "async", "includeCost": True, "ttl": expires,
            "webhookURL": self.webhook_url(task_uuid),
            "uploadEndpoint": self.storage.presign_put(
                self.layout.staging(job.id, task_uuid), min(expires, 7 * 86400)),
        })
        return check_outgoing_task(payload)

    def _fail_slot(self, job_id: str, slot: int, task_uuid: str | None, code: str,
                   message: str) -> bool:
        return self.store.transition_slot(job_id, slot, SLOT_OPEN, "failed",
                                          task_uuid=task_uuid, error_code=code,
                                          error_message=message[:1000])

    # ------------------------------------------------------------------ receive
    def accept_webhook(self, task_uuid: str, body: Any) -> list[ResultOutcome]:
        """Record what a webhook says about one task (the caller has checked its token)."""
        location = self.store.find_task(task_uuid)
        if location is None:
            raise NotFound(f"no task {task_uuid}")
        try:
            results, untied = parse_provider_body(body)
        except ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            raise RequestInvalid("the webhook body is not a Runware result", messages) from None
        others = {result.task_uuid for result in results} - {task_uuid}
        if others:
            raise RequestInvalid("the body names another task than the URL",
                                 {"taskUUID": sorted(others)})
        if not results and untied:
            results = [untied_error_result(task_uuid, untied[0])]
        if not results:
            raise RequestInvalid("the webhook body holds no result", {"data": ["empty"]})
        return self.record_results(task_uuid, results)

    def record_results(self, task_uuid: str, results: list[ProviderResult]
                       ) -> list[ResultOutcome]:
        """Feed provider results into the slot they belong to; idempotent and monotonic."""
        location = self.store.find_task(task_uuid)
        if location is None:
            raise NotFound(f"no task {task_uuid}")
        job_id, slot_no = location
        outcomes = [ResultOutcome(job_id, slot_no, self._record_one(job_id, slot_no, result))
                    for result in results]
        if any(o.outcome in {"failed", "discarded", "dead"} for o in outcomes):
            self.finish_job(job_id)
        return outcomes

    def _record_one(self, job_id: str, slot_no: int, result: ProviderResult) -> str:
        if result.status == "processing":
            return "processing"
        task_uuid = result.task_uuid
        job_state = self.store.job_state(job_id)
        slot = self.store.get_slot(job_id, slot_no)
        if slot is None or job_state is None:
            raise NotFound(f"no job {job_id}")
        if slot.task_uuid != task_uuid:
            log.info("result of an earlier attempt ignored", extra={
                "job_id": job_id, "slot": slot_no, "task_uuid": task_uuid})
            return "stale"
        if not result.ok and (job_state in JOB_TERMINAL or slot.state not in AWAITING_RESULT):
            # A failure reported for an image that has ended (or a replayed webhook URL) can
            # change nothing: no new attempt, no circuit, no lease.
            return "duplicate"
        if result.ok:
            fields = {"image_uuid": result.image_uuid, "image_url": result.image_url,
                      "seed": result.seed, "cost": result.cost, "nsfw": result.nsfw,
                      "received_at": repr(time.time())}
            if job_state in {"cancelled", "timed_out"}:
                allowed = ["pending", "submitted", "received"]
                if slot.state == "failed" and slot.error_code in {"deadline", "cancelled"}:
                    allowed.append("failed")
                applied = self.store.transition_slot(job_id, slot_no, allowed, "discarded",
                                                     task_uuid=task_uuid, **fields)
                self._release([task_uuid])
                return "discarded" if applied else "duplicate"
            applied = self.store.transition_slot(job_id, slot_no, ["pending", "submitted"],
                                                 "received", task_uuid=task_uuid, **fields)
            self._release([task_uuid])
            return "received" if applied else "duplicate"
        # An image that failed at the provider: only a known transient code earns a new attempt.
        # Only a live slot's failure gets here, so only a live slot's failure opens the circuit.
        kind = classify(400, result.error_code)
        if kind == ProviderError.ACCOUNT:
            self.open_circuit(ProviderError(result.error_message or "account error",
                                            kind=kind, provider_code=result.error_code))
            kind = ProviderError.TRANSIENT
        self._release([task_uuid])
        if (kind == ProviderError.TRANSIENT and slot.attempt < self.settings.slot_max_attempts
                and job_state not in {"cancelled", "timed_out"}):
            applied = self.store.new_attempt(
                job_id, slot_no, ["pending", "submitted"], slot.attempt + 1, task_uuid=task_uuid,
                error_code=result.error_code, error_message=(result.error_message or "")[:1000])
            if applied:
                self.dispatcher.submit_job(job_id, countdown=self._backoff(slot.attempt))
                return "retrying"
            return "duplicate"
        code = result.error_code or "providerError"
        message = result.error_message or "the provider reported an error"
        if kind == ProviderError.TRANSIENT and job_state not in {"cancelled", "timed_out"}:
            applied = self.store.transition_slot(
                job_id, slot_no, ["pending", "submitted"], "dead", task_uuid=task_uuid,
                error_code=code, error_message=message[:1000])
            if applied:
                self.store.dead_letter(job_id, slot_no, code, message)
                log.warning("slot dead-lettered: retry budget spent", extra={
                    "job_id": job_id, "slot": slot_no, "code": code,
                    "attempts": slot.attempt})
            return "dead" if applied else "duplicate"
        applied = self._fail_slot(job_id, slot_no, task_uuid, code, message)
        return "failed" if applied else "duplicate"

    # ------------------------------------------------------------------ promote
    def promote_slot(self, job_id: str, slot_no: int, *, allow_fetch: bool = False) -> str:
        """Verify a received image and write it to its final key; returns stored, missing,
        rejected, discarded or noop. Raises `StorageError` when S3 fails."""
        job = self.store.get_job(job_id)
        if job is None:
            return "noop"
        slot = next((s for s in job.slots if s.slot == slot_no), None)
        if slot is None or slot.state != "received" or slot.task_uuid is None:
            return "noop"
        if job.state in {"cancelled", "timed_out"}:
            self.store.transition_slot(job_id, slot_no, ["received"], "discarded")
            self.finish_job(job_id)
            return "discarded"
        staging = self.layout.staging(job_id, slot.task_uuid)
        head = self.storage.head(staging)
        if head is None:
            if not allow_fetch or not slot.image_url:
                return "missing"
            return self._promote_fetched(job, slot)
        try:
            if head.size > self.settings.max_image_bytes:
                raise ImageRejected(f"the staged object has {head.size} bytes, more than "
                                    f"{self.settings.max_image_bytes}")
            prefix = self.storage.read_prefix(staging, HEADER_BYTES)
            info = self._verify(job, inspect_image(prefix))
            check_complete(info.format, head.size, prefix, self.storage.read_suffix(staging, 16))
        except ImageRejected as exc:
            if slot.image_url:
                # A bad upload is not the image: the provider's hosted copy may still be good.
                if not allow_fetch:
                    log.warning("staged object rejected; a worker will fetch imageURL",
                                extra={"job_id": job_id, "slot": slot_no, "error": exc.message})
                    return "missing"
                return self._promote_fetched(job, slot)
            self._fail_slot(job_id, slot_no, slot.task_uuid, "image_rejected", exc.message)
            self.finish_job(job_id)
            return "rejected"
        final_key = self.layout.final(job_id, slot_no, job.output_format)
        stored = self.storage.copy(staging, final_key, if_match=head.etag,
                                   content_type=FORMAT_CONTENT_TYPES[info.format],
                                   metadata=self._object_metadata(job, slot, info))
        applied = self.store.transition_slot(
            job_id, slot_no, ["received"], "stored", task_uuid=slot.task_uuid,
            final_key=final_key, width=info.width, height=info.height, size=stored.size,
            etag=stored.etag, stored_at=repr(time.time()))
        self._remove_staging(job_id, slot_no, staging)
        if applied:
            log.info("image stored", extra={"job_id": job_id, "slot": slot_no, "key": final_key})
            self.finish_job(job_id)
        return "stored" if applied else "noop"

    def _remove_staging(self, job_id: str, slot_no: int, key: str) -> None:
        try:
            self.storage.delete(key)
        except StorageError:
            log.warning("staging object left for the lifecycle rule",
                        extra={"job_id": job_id, "slot": slot_no})

    def _promote_fetched(self, job: Job, slot: Slot) -> str:
        """Store the provider-hosted copy of an image whose upload never landed or was bad."""
        assert slot.task_uuid is not None and slot.image_url is not None
        try:
            data = self._fetch_image(slot.image_url)
            info = self._verify(job, inspect_image(data))
            check_complete(info.format, len(data), data[:16], data[-16:])
        except ImageRejected as exc:
            self._fail_slot(job.id, slot.slot, slot.task_uuid, "image_rejected", exc.message)
            self.finish_job(job.id)
            return "rejected"
        final_key = self.layout.final(job.id, slot.slot, job.output_format)
        stored = self.storage.put(final_key, data, content_type=FORMAT_CONTENT_TYPES[info.format],
                                  metadata=self._object_metadata(job, slot, info))
        applied = self.store.transition_slot(
            job.id, slot.slot, ["received"], "stored", task_uuid=slot.task_uuid,
            final_key=final_key, width=info.width, height=info.height, size=stored.size,
            etag=stored.etag, stored_at=repr(time.time()))
        self._remove_staging(job.id, slot.slot, self.layout.staging(job.id, slot.task_uuid))
        if applied:
            self.finish_job(job.id)
        return "stored" if applied else "noop"

    def _verify(self, job: Job, info: ImageInfo) -> ImageInfo:
        if info.format != job.output_format:
            raise ImageRejected(f"asked for {job.output_format}, got {info.format}")
        spec = get_model(job.model)
        references = len((job.params.get("inputs") or {}).get("referenceImages") or [])
        expected = spec.expected_sizes(job.params.get("width"), job.params.get("height"),
                                       job.params.get("resolution"), references)
        if (info.width, info.height) not in expected:
            raise ImageRejected(f"the image is {info.width}x{info.height}, expected one of "
                                f"{', '.join(f'{w}x{h}' for w, h in sorted(expected))}")
        return info

    def _fetch_image(self, url: str) -> bytes:
        """Download the provider-hosted copy of an image, within the allow-list and size cap."""
        try:
            checked = check_outbound_url(url, allowed_hosts=self.settings.runware_image_hosts,
                                         allow_private=self.settings.allow_private_urls)
        except UnsafeURL as exc:
            raise ImageRejected(f"imageURL refused: {exc}") from None
        client = self.http or httpx.Client(timeout=30.0, follow_redirects=False)
        try:
            response = client.send(pinned_request(client, "GET", checked), stream=True)
            try:
                if response.status_code >= 500 or response.status_code == 429:
                    raise StorageError(f"imageURL answered {response.status_code}")
                if response.status_code != 200:
                    raise ImageRejected(f"imageURL answered {response.status_code}")
                chunks: list[bytes] = []
                total = 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > self.settings.max_image_bytes:
                        raise ImageRejected("imageURL is larger than the size cap")
                    chunks.append(chunk)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise StorageError(f"imageURL fetch failed: {type(exc).__name__}") from None
        finally:
            if self.http is None:
                client.close()
        return b"".join(chunks)

    def _object_metadata(self, job: Job, slot: Slot, info: ImageInfo) -> dict[str, str]:
        prompt = str(job.params.get("positivePrompt", ""))
        metadata = {
            "imagine-job-id": job.id, "imagine-slot": str(slot.slot),
            "imagine-tenant": job.tenant, "imagine-model": job.model,
            "imagine-task-uuid": slot.task_uuid or "",
            "imagine-image-uuid": metadata_value(slot.image_uuid, 128),
            "imagine-prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "imagine-width": str(info.width), "imagine-height": str(info.height),
        }
        if slot.seed is not None:
            metadata["imagine-seed"] = metadata_value(str(slot.seed), 32)
        used = metadata_size(metadata)
        for key, value in job.metadata.items():
            name, text = f"user-{key.lower()}", metadata_value(value, 256)
            # S3 refuses the whole object past its metadata limit: a paid image is stored
            # without the pairs that do not fit rather than not at all.
            if used + len(name) + len(text) > S3_METADATA_LIMIT:
                log.warning("object metadata over S3's limit: user pair left out", extra={
                    "job_id": job.id, "slot": slot.slot, "key": name})
                continue
            metadata[name] = text
            used += len(name) + len(text)
        return metadata

    # ------------------------------------------------------------------ finish
    def finish_job(self, job_id: str) -> bool:
        """End a job once every slot has ended: manifest first, then the terminal state."""
        job = self.store.get_job(job_id)
        if job is None or any(not slot.terminal for slot in job.slots):
            return False
        stored = [slot for slot in job.slots if slot.state == "stored"]
        if job.state == "cancelled":
            state = "cancelled"
        elif len(stored) == len(job.slots) and job.slots:
            state = "succeeded"
        elif stored:
            state = "partially_succeeded"
        elif any(slot.error_code == "deadline" for slot in job.slots):
            state = "timed_out"
        else:
            state = "failed"
        if job.terminal and job.manifest_key and job.state == state:
            return False
        version = max(job.manifest_version, 1)
        # The last slot's change ends the job: concurrent finishers write the same manifest.
        ended = job.ended_at or max((slot.updated_at or 0.0 for slot in job.slots),
                                    default=0.0) or time.time()
        manifest_key = self._put_manifest(job, state, version, ended)
        applied = self.store.transition_job(
            job_id, ["queued", "running"], state, manifest_key=manifest_key,
            manifest_version=version, ended_at=repr(ended))
        if not applied:
            self.store.set_job_fields(job_id, manifest_key=manifest_key, manifest_version=version)
            return False
        self._announce_end(job, state, manifest_key)
        log.info("job ended", extra={"job_id": job_id, "state": state, "stored": len(stored),
                                     "images": len(job.slots)})
        return True

    def _put_manifest(self, job: Job, state: str, version: int, ended: float) -> str:
        key = self.layout.manifest(job.id)
        manifest = self.manifest(job, state, version, ended)
        self.storage.put(key, json.dumps(manifest, indent=2).encode(),
                         content_type="application/json",
                         metadata={"imagine-job-id": job.id, "imagine-state": state,
                                   "imagine-manifest-version": str(version)})
        return key

    def _announce_end(self, job: Job, state: str, manifest_key: str) -> None:
        """An ended job: retention TTLs, the event consumers follow, and the callback."""
        self.store.retire_job(job.id)
        cost = sum(slot.cost or 0.0 for slot in job.slots)
        self.store.publish_event({"type": "job.ended", "jobId": job.id, "tenant": job.tenant,
                                  "state": state, "manifestKey": manifest_key,
                                  "cost": round(cost, 6)})
        if job.callback_url:
            self.dispatcher.notify_job(job.id)

    def manifest(self, job: Job, state: str, version: int, ended: float) -> dict[str, Any]:
        return {
            "manifestVersion": version, "jobId": job.id, "tenant": job.tenant, "state": state,
            "model": job.model, "createdAt": iso(job.created_at), "endedAt": iso(ended),
            "reason": job.reason, "clientTaskUUID": job.client_task_uuid,
            "metadata": job.metadata, "request": job.params,
            "cost": round(sum(slot.cost or 0.0 for slot in job.slots), 6),
            "slots": [self.slot_view(slot) for slot in job.slots],
        }

    def slot_view(self, slot: Slot) -> dict[str, Any]:
        return {
            "slot": slot.slot, "state": slot.state, "attempt": slot.attempt,
            "taskUUID": slot.task_uuid, "finalKey": slot.final_key, "imageUUID": slot.image_uuid,
            "seed": slot.seed, "cost": slot.cost, "width": slot.width, "height": slot.height,
            "bytes": slot.size, "etag": slot.etag,
            "error": ({"code": slot.error_code, "message": slot.error_message}
                      if slot.error_code and slot.state != "stored" else None),
        }

    def job_view(self, job: Job) -> dict[str, Any]:
        costs = [slot.cost for slot in job.slots if slot.cost is not None]
        return {
            "id": job.id, "tenant": job.tenant, "state": job.state, "model": job.model,
            "numberResults": job.slot_count, "outputFormat": job.output_format,
            "createdAt": iso(job.created_at), "updatedAt": iso(job.updated_at),
            "deadlineAt": iso(job.deadline_at), "endedAt": iso(job.ended_at),
            "reason": job.reason, "clientTaskUUID": job.client_task_uuid,
            "idempotencyKey": job.idempotency_key, "callbackURL": job.callback_url,
            "metadata": job.metadata, "manifestKey": job.manifest_key,
            "cost": round(sum(costs), 6) if costs else None,
            "slots": [self.slot_view(slot) for slot in job.slots],
        }

    # ------------------------------------------------------------------ end early
    def cancel_job(self, job_id: str, tenant: str | None = None) -> Job:
        job = self.get_job(job_id, tenant)
        if job.terminal:
            raise Conflict(f"job {job_id} has already ended as {job.state}")
        self.store.transition_job(job_id, ["queued", "running"], "cancelled",
                                  reason="cancelled by request", ended_at=repr(time.time()))
        self._close_open_slots(job, "cancelled", "the job was cancelled")
        self._write_final_manifest(job_id)
        return self.get_job(job_id)

    def expire_job(self, job_id: str) -> None:
        """At the deadline, unfinished slots fail with reason `deadline` and the job ends."""
        job = self.store.get_job(job_id)
        if job is None or job.terminal:
            return
        for slot in job.slots:
            if slot.state == "received":
                try:
                    self.promote_slot(job_id, slot.slot, allow_fetch=True)
                except (StorageError, ImageRejected) as exc:
                    log.warning("image not stored by the deadline", extra={
                        "job_id": job_id, "slot": slot.slot, "error": exc.message})
        job = self.store.get_job(job_id)
        if job is None or job.terminal:
            return
        self._close_open_slots(job, "deadline", "the job's deadline passed")
        self.finish_job(job_id)

    def _close_open_slots(self, job: Job, code: str, message: str) -> None:
        for slot in job.slots:
            if slot.state in SLOT_OPEN:
                self.store.transition_slot(job.id, slot.slot, SLOT_OPEN, "failed",
                                           error_code=code, error_message=message)
                if slot.task_uuid:
                    self._release([slot.task_uuid])

    def _write_final_manifest(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None:
            return
        version = max(job.manifest_version, 1)
        key = self._put_manifest(job, job.state, version, job.ended_at or time.time())
        self.store.set_job_fields(job_id, manifest_key=key, manifest_version=version)
        self._announce_end(job, job.state, key)

    # ------------------------------------------------------------------ operators
    def retry_job(self, job_id: str, slots: list[int] | None = None) -> Job:
        """Reopen failed or dead slots as new attempts: the one recorded way back for a job.

        The job returns to `running`, its deadline restarts, and when it ends again the manifest
        is rewritten with a higher version.
        """
        job = self.get_job(job_id)
        wanted = [slot for slot in job.slots
                  if slot.state in {"failed", "dead"} and (slots is None or slot.slot in slots)]
        if not wanted:
            raise Conflict(f"job {job_id} has no failed or dead slot to retry")
        now = time.time()
        deadline = now + max(self.settings.default_deadline_seconds,
                             int(job.deadline_at - job.created_at))
        self.store.reopen_job(job_id, deadline, job.manifest_version + 1)
        for slot in wanted:
            self.store.new_attempt(job_id, slot.slot, ["failed", "dead"], slot.attempt + 1,
                                   error_code=None, error_message=None, reopened_at=repr(now))
            self.store.remove_dead_letter(job_id, slot.slot)
        log.warning("job reopened by an operator", extra={
            "job_id": job_id, "slots": [slot.slot for slot in wanted]})
        self.dispatcher.submit_job(job_id)
        return self.get_job(job_id)

    def replay_dead_letters(self, limit: int = 100) -> list[str]:
        """Re-drive dead-lettered slots, one `retry_job` per job."""
        by_job: dict[str, list[int]] = {}
        for entry in self.store.dead_letters(limit):
            by_job.setdefault(entry["jobId"], []).append(int(entry["slot"]))
        replayed = []
        for job_id, slots in by_job.items():
            try:
                self.retry_job(job_id, slots)
                replayed.append(job_id)
            except (NotFound, Conflict):
                for slot in slots:
                    self.store.remove_dead_letter(job_id, slot)
        return replayed

    # ------------------------------------------------------------------ callbacks
    def send_callback(self, job_id: str) -> str:
        """POST the ended job to its callback URL, signed per Standard Webhooks."""
        job = self.store.get_job(job_id)
        if job is None or not job.callback_url or not job.terminal:
            return "skipped"
        if not self.settings.callback_secret:
            # Never unsigned: a receiver could not tell our callback from a forged one.
            log.warning("callback not sent: no CALLBACK_SECRET to sign it", extra={
                "job_id": job_id})
            return "refused:unsigned"
        try:
            checked = check_outbound_url(job.callback_url, allowed_hosts=None,
                                         allow_private=self.settings.allow_private_urls)
        except UnsafeURL as exc:
            log.warning("callback refused", extra={"job_id": job_id, "error": str(exc)})
            return "refused"
        body = json.dumps({"type": "job.ended", "data": self.job_view(job)}).encode()
        headers = {"Content-Type": "application/json"}
        headers.update(sign_callback(self.settings.callback_secret.reveal().encode(),
                                     f"{job_id}:{job.state}", body))
        client = self.http or httpx.Client(timeout=10.0, follow_redirects=False)
        try:
            response = client.send(pinned_request(client, "POST", checked, content=body,
                                                  headers=headers))
        except httpx.HTTPError as exc:
            raise ProviderError(f"callback failed: {type(exc).__name__}",
                                kind=ProviderError.TRANSIENT) from None
        finally:
            if self.http is None:
                client.close()
        if response.status_code >= 500 or response.status_code in {408, 429}:
            raise ProviderError(f"callback answered {response.status_code}",
                                kind=ProviderError.TRANSIENT)
        return "sent" if response.status_code < 300 else f"refused:{response.status_code}"

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> dict[str, int]:
        """One pass over active jobs: end overdue ones, re-drive stuck work, poll silent slots."""
        counts = {"expired": 0, "redriven": 0, "polled": 0, "promoted": 0, "finished": 0}
        now = time.time()
        circuit = self.circuit()
        probe = (circuit.get("state") == "open"
                 and now >= float(circuit.get("probe_at") or 0))
        for job_id, deadline in self.store.active_jobs():
            try:
                probe = self._reconcile_job(job_id, deadline, now, probe, counts)
            except Exception:
                # One job's failure must not stop the pass for every other job's deadline.
                counts["errors"] = counts.get("errors", 0) + 1
                log.exception("reconcile step failed", extra={"job_id": job_id})
        return counts

    def _reconcile_job(self, job_id: str, deadline: float, now: float, probe: bool,
                       counts: dict[str, int]) -> bool:
        """Reconcile one active job; returns whether the circuit probe is still to be sent."""
        grace = self.settings.reconcile_grace_seconds
        job = self.store.get_job(job_id)
        if job is None:
            self.store.redis.zrem(self.store.active_key, job_id)
            return probe
        if job.terminal:
            self.store.retire_job(job_id)
            return probe
        if now >= deadline:
            self.expire_job(job_id)
            counts["expired"] += 1
            return probe
        if all(slot.terminal for slot in job.slots):
            # Every slot has ended but the job has not: the process that moved the last slot
            # died before finish_job. Nothing else would end the job before its deadline.
            last = max((slot.updated_at or 0.0 for slot in job.slots), default=0.0)
            if now - max(last, job.updated_at) > grace and self.finish_job(job_id):
                counts["finished"] += 1
            return probe
        pending = [s for s in job.slots if s.state == "pending"]
        stale_pending = now - job.updated_at > grace
        if pending and probe:
            # One job probes the provider while the circuit is open; success closes it.
            self.store.redis.hset(f"{self.store.ns}:circuit", "probe_at",
                                  repr(now + self.settings.circuit_probe_seconds))
            try:
                self.submit_job(job_id, probe=True)
            except ProviderError as exc:
                log.warning("circuit probe failed", extra={"code": exc.provider_code})
            probe = False
            counts["probed"] = 1
        elif pending and stale_pending:
            self.dispatcher.submit_job(job_id)
            counts["redriven"] += 1
        for slot in job.slots:
            if slot.state == "submitted" and slot.task_uuid and (
                    now - (slot.submitted_at or now) > grace):
                self._poll(slot.task_uuid)
                counts["polled"] += 1
            elif slot.state == "received" and now - (slot.received_at or now) > grace:
                self.dispatcher.finalize_slot(job_id, slot.slot)
                counts["promoted"] += 1
        return probe

    def _poll(self, task_uuid: str) -> None:
        try:
            results = self._runware().get_response(task_uuid)
        except ProviderError as exc:
            log.warning("getResponse failed", extra={"task_uuid": task_uuid,
                                                     "code": exc.provider_code})
            return
        finished = [r for r in results if r.status != "processing"]
        if not finished:
            return
        for outcome in self.record_results(task_uuid, finished[:1]):
            if outcome.outcome == "received":
                self.dispatcher.finalize_slot(outcome.job_id, outcome.slot)
