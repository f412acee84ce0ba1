"""An S3 server that checks SigV4 presigned signatures (s3rver), installed into .cache on first use.

moto's server does not check signatures, and neither does s3rver 3.7.1, the last release of the
original package (its SigV4 path accepts any signature of a known access key). The
@20minutes/s3rver fork is the same server with SigV4 verification implemented: method, path,
query and signed headers are all checked, so it can tell a URL's scope.

Also the harness of the use-case tests: `JobService` over the session's Redis server, an in-memory
bucket and a Runware that answers over `httpx.MockTransport`, built in one fixture.
"""

from __future__ import annotations

import fcntl
import io
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from infra import servers, supervise
from pipeline.config import Settings
from pipeline.runware import RunwareClient
from pipeline.storage import KeyLayout, MemoryObjectStorage
from pipeline.store import RedisCircuit, RedisInFlightBudget, RedisJobStore, redis_client
from tests.conftest import RecordingDispatcher

if TYPE_CHECKING:
    from pipeline.services import JobService

S3RVER_PACKAGE = "@20minutes/s3rver"
S3RVER_VERSION = "5.0.0"
S3RVER_CACHE = supervise.REPO_ROOT / ".cache" / "s3rver"
# s3rver's one built-in account; it knows no other keys.
S3RVER_KEY = "S3RVER"
S3RVER_REGION = "us-east-1"
_LAUNCH = """
const [modulePath, address, port, directory] = process.argv.slice(1);
const S3rver = require(modulePath);
new S3rver({address, port: Number(port), directory, silent: true, vhostBuckets: false})
  .run()
  .then(({port}) => console.log(`s3rver listening on ${port}`))
  .catch((err) => { console.error(err); process.exit(1); });
"""


def _installed_version(prefix: Path) -> str | None:
    manifest = prefix / "node_modules" / S3RVER_PACKAGE / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install_s3rver(prefix: Path = S3RVER_CACHE) -> Path:
    """The package directory of s3rver under prefix, installed with npm when absent."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is not on PATH; the presigned-URL tests need node and npm to run s3rver",
                pytrace=False,
            )
    prefix.mkdir(parents=True, exist_ok=True)
    command = [
        "npm",
        "install",
        "--no-audit",
        "--no-fund",
        "--prefix",
        str(prefix),
        f"{S3RVER_PACKAGE}@{S3RVER_VERSION}",
    ]
    # Two pytest runs on one fresh checkout must not run npm in the same directory at once.
    with (prefix.parent / "s3rver.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(prefix) != S3RVER_VERSION:
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=300, check=False
                )
            except subprocess.TimeoutExpired:
                pytest.fail(f"`{' '.join(command)}` did not finish in 300 s", pytrace=False)
            if done.returncode != 0 or _installed_version(prefix) != S3RVER_VERSION:
                output = (done.stdout + done.stderr).strip()[-2000:]
                pytest.fail(
                    f"could not install s3rver: `{' '.join(command)}` exited "
                    f"{done.returncode}\n{output}",
                    pytrace=False,
                )
    return prefix / "node_modules" / S3RVER_PACKAGE


def s3rver_client(endpoint: str) -> Any:
    """A boto3 client of s3rver with its built-in account, for setting up and checking a bucket."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3RVER_REGION,
        aws_access_key_id=S3RVER_KEY,
        aws_secret_access_key=S3RVER_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def s3rver_service(tmp_workdir: Path) -> Iterator[supervise.Service]:
    """s3rver on a free port with its data in a temporary directory."""
    package = install_s3rver()
    data = tmp_workdir / "s3rver"
    data.mkdir(parents=True, exist_ok=True)
    env = servers.scrubbed_environ()
    for _ in range(3):
        port = supervise.free_port()
        process = supervise.ManagedProcess(
            "s3rver",
            ["node", "-e", _LAUNCH, str(package), "127.0.0.1", str(port), str(data)],
            log_dir=tmp_workdir / "logs",
            env=env,
            cwd=data,
        ).start()
        try:
            supervise.wait_for_http(
                f"http://127.0.0.1:{port}/", 30, expect_status=None, process=process
            )
        except supervise.ProcessError:
            process.stop(timeout=5)
            if "EADDRINUSE" in process.tail(20):
                continue  # another process took the port between the probe and the bind
            raise
        break
    else:
        pytest.fail("s3rver found no free port in 3 attempts", pytrace=False)
    yield supervise.Service(process, f"http://127.0.0.1:{port}", port)
    process.stop()


@pytest.fixture
def s3rver_bucket(s3rver_service: supervise.Service) -> tuple[str, str]:
    """(endpoint, bucket): a new empty bucket on s3rver for each test."""
    assert s3rver_service.url is not None
    bucket = f"presign-{uuid.uuid4().hex[:12]}"
    s3rver_client(s3rver_service.url).create_bucket(Bucket=bucket)
    return s3rver_service.url, bucket


# ------------------------------------------------------------------ the use cases, held directly
# JobService over a real Redis server, an in-memory bucket and the Runware client on
# httpx.MockTransport: every request the use cases send is answered here and recorded.

USE_CASE_RUNWARE_URL = "https://api.runware.test/v1"
USE_CASE_RUNWARE_KEY = "use-case-runware-key"
USE_CASE_WEBHOOK_SECRET = "use-case-webhook-secret-0001"
# A literal public address: the imageURL check passes without a DNS answer, and still runs.
USE_CASE_IMAGE_HOST = "93.184.216.34"
USE_CASE_BUCKET = "imagine-memory"
USE_CASE_PREFIX = "use-cases/"
PROCESSING = "processing"


def jpeg_bytes(width: int = 1024, height: int = 1024) -> bytes:
    """A real JPEG of the requested size, as the provider would upload it."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def image_item(task_uuid: str, **fields: Any) -> dict[str, Any]:
    """One finished image as Runware reports it (webhook, acknowledgement or getResponse)."""
    return {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "imageUUID": str(uuid.uuid4()),
        "imageURL": f"https://{USE_CASE_IMAGE_HOST}/image/{task_uuid}.jpg",
        "seed": 7,
        "cost": 0.07,
        **fields,
    }


def error_item(task_uuid: str, code: str, message: str = "the provider failed") -> dict[str, Any]:
    return {"taskType": "imageInference", "taskUUID": task_uuid, "code": code, "message": message}


@dataclass
class FakeRunware:
    """Runware's REST API as its wire contract says, plus its image host, over MockTransport.

    Each imageInference task gets its own async acknowledgement, unless the next entry of
    `refusals` is an error (an entry of None accepts);
    `getResponse` answers from `responses` (else `processing`), or `taskFailedOrNotFound` for a
    task in `lost` (`lost_untied`: the error names no task); `outage` answers the next POSTs
    with these statuses, as an overloaded provider does; `lost_acks` accepts the next POSTs'
    tasks and answers 503, as an acknowledgement lost on the way does.
    With `conflicts`, a taskUUID accepted before gets `conflictTaskUUID` (without its taskUUID
    when `conflict_untied`), as Runware answers; `on_accept` runs for each task accepted
    (from the request's thread, before the answer: a fast provider's webhook)."""

    store: RedisJobStore | None = None
    posts: list[list[dict[str, Any]]] = field(default_factory=list)
    stored_before_post: dict[str, bool] = field(default_factory=dict)
    refusals: list[dict[str, Any] | None] = field(default_factory=list)
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    outage: list[int] = field(default_factory=list)
    hosted: dict[str, bytes] = field(default_factory=dict)
    fetches: list[httpx.Request] = field(default_factory=list)
    lost: set[str] = field(default_factory=set)
    lost_untied: bool = False
    lost_acks: int = 0
    conflicts: bool = False
    conflict_untied: bool = False
    accepted: list[str] = field(default_factory=list)
    on_accept: Callable[[str], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == USE_CASE_RUNWARE_URL:
            return self._api(request)
        if request.url.host == USE_CASE_IMAGE_HOST and request.method == "GET":
            self.fetches.append(request)
            data = self.hosted.get(request.url.path)
            return httpx.Response(200, content=data) if data else httpx.Response(404)
        return httpx.Response(404)

    def _api(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {USE_CASE_RUNWARE_KEY}":
            return httpx.Response(
                401, json={"errors": [{"code": "invalidApiKey", "message": "Invalid API key"}]}
            )
        tasks: list[dict[str, Any]] = json.loads(request.content)
        with self.lock:
            self.posts.append(tasks)
            if self.outage:
                return httpx.Response(
                    self.outage.pop(0),
                    json={
                        "errors": [
                            {"code": "serverError", "message": "temporary capacity constraint"}
                        ]
                    },
                )
            data, errors, fresh = self._answer(tasks)
            lost_ack = bool(fresh) and self.lost_acks > 0
            self.lost_acks -= lost_ack
        for task_uuid in fresh:
            if self.on_accept is not None:
                self.on_accept(task_uuid)
        if lost_ack:
            return httpx.Response(503, json={"errors": [{"code": "serviceUnavailable"}]})
        status = 400 if errors and not data else 200
        return httpx.Response(
            status, json={"data": data, "errors": errors} if errors else {"data": data}
        )

    def _answer(
        self, tasks: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        fresh: list[str] = []
        for task in tasks:
            task_uuid = task["taskUUID"]
            if task["taskType"] == "getResponse":
                if task_uuid in self.lost:
                    errors.append(
                        {"code": "taskFailedOrNotFound", "message": "No task found"}
                        | ({} if self.lost_untied else {"taskUUID": task_uuid})
                    )
                    continue
                data.extend(
                    self.responses.get(
                        task_uuid,
                        [
                            {
                                "taskType": "imageInference",
                                "taskUUID": task_uuid,
                                "status": PROCESSING,
                            }
                        ],
                    )
                )
                continue
            if self.store is not None:
                self.stored_before_post[task_uuid] = self.store.find_task(task_uuid) is not None
            if self.conflicts and task_uuid in self.accepted:
                conflict = {"code": "conflictTaskUUID", "message": "exists", "taskUUID": task_uuid}
                if self.conflict_untied:
                    del conflict["taskUUID"]
                errors.append(conflict)
                continue
            refusal = self.refusals.pop(0) if self.refusals else None
            if refusal is not None:
                errors.append({"taskType": "imageInference", "taskUUID": task_uuid, **refusal})
            else:
                data.append({"taskType": "imageInference", "taskUUID": task_uuid})
                self.accepted.append(task_uuid)
                fresh.append(task_uuid)
        return data, errors, fresh

    def inference_posts(self) -> list[list[dict[str, Any]]]:
        """The POSTs that submitted images (not polls)."""
        return [
            tasks
            for tasks in self.posts
            if any(task["taskType"] == "imageInference" for task in tasks)
        ]

    def polls(self) -> list[str]:
        """The taskUUIDs polled with getResponse, in order."""
        return [
            task["taskUUID"]
            for tasks in self.posts
            for task in tasks
            if task["taskType"] == "getResponse"
        ]

    def submitted(self) -> dict[str, dict[str, Any]]:
        """Every imageInference task sent, by taskUUID."""
        return {task["taskUUID"]: task for tasks in self.inference_posts() for task in tasks}

    def host(self, url: str, data: bytes) -> None:
        """Serve `data` at an imageURL of the image host."""
        self.hosted[httpx.URL(url).path] = data


@dataclass
class Clock:
    """The time the use cases read, moved forward instead of slept through."""

    monkeypatch: pytest.MonkeyPatch
    offset: float = 0.0

    def __post_init__(self) -> None:
        real = time.time
        self.monkeypatch.setattr("pipeline.clock.now", lambda: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class UseCases:
    """The use cases and everything they touch, with shortcuts to jobs in known states."""

    settings: Settings
    service: JobService
    store: RedisJobStore
    storage: MemoryObjectStorage
    runware: FakeRunware
    dispatcher: RecordingDispatcher
    clock: Clock

    def create(self, **request: Any) -> str:
        body = {"positivePrompt": "a lighthouse at dawn", "width": 1024, "height": 1024, **request}
        job, created = self.service.create_job(body, "acme")
        assert created
        return job.id

    def submitted(self, **request: Any) -> tuple[str, list[str]]:
        """A job whose images Runware accepted: (job id, taskUUID of each slot)."""
        job_id = self.create(**request)
        assert self.service.submit_job(job_id) == "submitted"
        return job_id, self.task_uuids(job_id)

    def task_uuids(self, job_id: str) -> list[str]:
        job = self.store.get_job(job_id)
        assert job is not None
        return [slot.task_uuid or "" for slot in job.slots]

    def upload(self, task_uuid: str, data: bytes) -> str:
        """PUT `data` to the task's uploadEndpoint, as Runware does; returns the key written."""
        url = httpx.URL(self.runware.submitted()[task_uuid]["uploadEndpoint"])
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        assert bucket == self.storage.bucket
        self.storage.put(key, data, content_type="binary/octet-stream")
        return key

    def webhook(self, task_uuid: str, body: dict[str, Any]) -> list[str]:
        """Deliver a webhook body; returns what each result did."""
        return [str(outcome.outcome) for outcome in self.service.accept_webhook(task_uuid, body)]

    def leases_in_use(self) -> int:
        """Images in flight at Runware under the harness's API key."""
        return self.service.context.budget.in_use()

    def dead_letters(self) -> list[tuple[str, int, str]]:
        """The dead-letter list as an operator reads it: (job id, slot, error code)."""
        letters = self.store.dead_letters()
        return [(entry.job_id, entry.slot, entry.code) for entry in letters]

    def manifest(self, job_id: str) -> dict[str, Any]:
        key = KeyLayout(self.settings.s3_prefix).manifest(job_id)
        raw = self.storage.read(key, max_bytes=1 << 20)
        manifest: dict[str, Any] = json.loads(raw)
        return manifest


@pytest.fixture
def use_case_settings(request: pytest.FixtureRequest, redis_server: str) -> Settings:
    """The harness's settings; a test changes some with
    `@pytest.mark.parametrize("use_case_settings", [{"NAME": "value"}], indirect=True)`."""
    overrides: dict[str, str] = getattr(request, "param", {})
    # A database of its own: the end-to-end suite's worker and beat keep running on database 0
    # of the same server, and the security suite uses database 1.
    return Settings.from_env(
        {
            "REDIS_URL": f"{redis_server.rsplit('/', 1)[0]}/2",
            "S3_BUCKET": USE_CASE_BUCKET,
            "S3_PREFIX": USE_CASE_PREFIX,
            "RUNWARE_API_KEY": USE_CASE_RUNWARE_KEY,
            "RUNWARE_API_URL": USE_CASE_RUNWARE_URL,
            "WEBHOOK_SECRETS": USE_CASE_WEBHOOK_SECRET,
            "RUNWARE_IMAGE_HOSTS": USE_CASE_IMAGE_HOST,
            "ALLOW_PRIVATE_URLS": "false",
            "SLOT_MAX_ATTEMPTS": "3",
            "RECONCILE_GRACE_SECONDS": "60",
            "LOG_FORMAT": "text",
            **overrides,
        }
    )


@pytest.fixture
def use_cases(use_case_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[UseCases]:
    """The one place the service is built for these tests; its database emptied first."""
    # Imported here: the rest of the integration suite does not need the use cases to import.
    from pipeline.context import Context
    from pipeline.services import JobService

    settings = use_case_settings
    client = redis_client(settings)
    client.flushdb()
    store = RedisJobStore.from_settings(settings, client)
    storage = MemoryObjectStorage(settings.s3_bucket)
    runware = FakeRunware(store=store)
    dispatcher = RecordingDispatcher()
    http = httpx.Client(transport=httpx.MockTransport(runware.handle))
    service = JobService(
        Context(
            settings=settings,
            store=store,
            storage=storage,
            dispatcher=dispatcher,
            circuit=RedisCircuit(client),
            budget=RedisInFlightBudget(client, USE_CASE_RUNWARE_KEY),
            http=http,
            provider=RunwareClient(http, USE_CASE_RUNWARE_KEY, USE_CASE_RUNWARE_URL),
        )
    )
    yield UseCases(
        settings=settings,
        service=service,
        store=store,
        storage=storage,
        runware=runware,
        dispatcher=dispatcher,
        clock=Clock(monkeypatch),
    )
    http.close()
    client.close()
