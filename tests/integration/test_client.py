"""imagine_client and the `imagine` command against the real jobs API (gunicorn) over HTTP, with
real Redis and S3 and no worker: jobs stay queued until cancelled."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

import imagine_client
from imagine_client import AsyncClient, Client, Job, RetryPolicy
from infra import servers, supervise

pytestmark = pytest.mark.integration

# A database of its own: e2e uses 0, the security suite 1, the use cases 2.
DATABASE = 5
REQUEST = {"positivePrompt": "a lighthouse at dawn", "resolution": "1K"}
BLOCKED = ("celery", "kombu", "boto3", "botocore", "flask", "werkzeug", "redis", "marshmallow")


@dataclass(frozen=True)
class Api:
    url: str
    keys: dict[str, str]
    redis_url: str
    env: dict[str, str]

    def client(self, tenant: str = "acme") -> Client:
        return Client(self.url, self.keys[tenant])


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: str,
    s3_server: str,
    s3_bucket: str,
    emulator_service: supervise.Service,
    emulator_api_key: str,
) -> Iterator[Api]:
    """The receiver serving the jobs API for tenants acme and other; no worker runs."""
    workdir = tmp_path_factory.mktemp("client-api")
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{DATABASE}"
    redis.Redis.from_url(redis_url).flushdb()
    keys = {"acme": f"acme-{uuid.uuid4().hex}", "other": f"other-{uuid.uuid4().hex}"}
    port = supervise.free_port()
    env = servers.pipeline_env(
        redis_url,
        s3_server,
        s3_bucket,
        emulator_service.url,
        emulator_api_key,
        port,
        api_keys=",".join(f"{tenant}:{key}" for tenant, key in keys.items()),
        log_format="text",
    )
    service = servers.start_receiver(workdir, env, port, log_dir=workdir / "logs")
    assert service.url is not None
    yield Api(service.url, keys, redis_url, env)
    service.stop()


def test_submit_is_idempotent_by_its_key_and_refuses_the_key_with_another_body(api: Api) -> None:
    with api.client() as client:
        first = client.submit(REQUEST, idempotency_key="order-1", metadata={"order": "1"})
        again = client.submit(REQUEST, idempotency_key="order-1", metadata={"order": "1"})
        assert (first.state, first.tenant, first.replayed) == ("queued", "acme", False)
        assert again.id == first.id and again.replayed
        assert first.metadata == {"order": "1"} and first.idempotency_key == "order-1"
        with pytest.raises(imagine_client.Conflict) as raised:
            client.submit({**REQUEST, "positivePrompt": "another"}, idempotency_key="order-1")
        assert raised.value.status == 409
        assert client.get(first.id).id == first.id


def test_errors_arrive_as_their_classes(api: Api) -> None:
    with api.client() as client:
        with pytest.raises(imagine_client.ValidationFailed) as refused:
            client.submit({"positivePrompt": "x", "width": 5, "height": 5})
        assert refused.value.status == 422 and refused.value.errors
        with pytest.raises(imagine_client.NotFound):
            client.get(str(uuid.uuid4()))
        with pytest.raises(imagine_client.ValidationFailed) as bad_state:
            list(client.list("bogus"))
        assert "state" in bad_state.value.errors
    with Client(api.url, "not-a-key") as stranger, pytest.raises(imagine_client.Unauthorized):
        stranger.get(str(uuid.uuid4()))


def test_a_tenant_sees_only_its_jobs_page_by_page(api: Api) -> None:
    with api.client("other") as client:
        made = [client.submit(REQUEST).id for _ in range(3)]
        first = client.list_page(limit=2)
        assert len(first.jobs) == 2 and first.next_cursor is not None
        listed = [job.id for job in client.list(page_size=2)]
        assert listed[:3] == made[::-1]
        assert {job.tenant for job in client.list("queued")} == {"other"}
    with api.client("acme") as acme:
        assert not set(made) & {job.id for job in acme.list()}
        with pytest.raises(imagine_client.NotFound):
            acme.get(made[0])


def test_cancel_then_cancel_again_and_wait_returns_at_once(api: Api) -> None:
    with api.client() as client:
        job = client.submit(REQUEST)
        cancelled = client.cancel(job.id)
        assert cancelled.state == "cancelled" and cancelled.ended
        assert client.cancel(job.id).state == "cancelled"
        assert client.wait(job.id, timeout=5).state == "cancelled"
        with pytest.raises(imagine_client.WaitTimeout):
            client.wait(client.submit(REQUEST).id, timeout=1.0, poll=0.2)


def test_the_async_client_against_the_real_api(api: Api) -> None:
    async def scenario() -> Job:
        async with AsyncClient(api.url, api.keys["acme"]) as client:
            job = await client.submit(REQUEST)
            assert (await client.get(job.id)).id == job.id
            assert job.id in [found.id async for found in client.list("queued")]
            return await client.cancel(job.id)

    assert asyncio.run(scenario()).state == "cancelled"


# ------------------------------------------------------------------ the command over HTTP


def imagine(
    *args: str, env: dict[str, str], cwd: Path, block: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `imagine`; with `block`, Celery, boto3, Flask, Redis and marshmallow cannot import."""
    prelude = ""
    if block:
        prelude = textwrap.dedent(
            f"""
            class Blocked:
                def find_spec(self, name, path=None, target=None):
                    if name.partition(".")[0] in {BLOCKED!r}:
                        raise ImportError("blocked for this test: " + name)
                    return None

            sys.meta_path.insert(0, Blocked())
            """
        )
    script = f"import sys\n{prelude}\nfrom pipeline.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**env, "PYTHONPATH": str(supervise.REPO_ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def base_env() -> dict[str, str]:
    """The environment without any setting of the pipeline or the client."""
    names = ("REDIS_URL", "IMAGINE_API_URL", "IMAGINE_API_KEY", "S3_", "API_KEYS")
    return {k: v for k, v in servers.scrubbed_environ().items() if not k.startswith(names)}


def test_a_tenant_with_only_an_api_key_submits_and_lists_without_the_pipelines_clients(
    api: Api, tmp_path: Path
) -> None:
    env = {**base_env(), "IMAGINE_API_URL": api.url, "IMAGINE_API_KEY": api.keys["acme"]}
    examples = supervise.REPO_ROOT / "infra" / "fixtures" / "model-page-examples.json"
    submitted = imagine(
        "submit", str(examples), "--example", "2", env=env, cwd=tmp_path, block=True
    )
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["tenant"] == "acme" and job["clientTaskUUID"]
    listed = imagine("jobs", "--state", "queued", env=env, cwd=tmp_path, block=True)
    assert listed.returncode == 0, listed.stderr
    assert job["id"] in listed.stdout
    assert listed.stderr == "jobs of tenant acme (the API key's) in state queued, newest first\n"
    refused = imagine("jobs", "--state", "bogus", env=env, cwd=tmp_path, block=True)
    assert refused.returncode == 1
    assert refused.stderr.startswith("imagine: validation_failed:")
    assert "state" in json.loads(refused.stdout)
    cancelled = imagine("cancel", job["id"], env=env, cwd=tmp_path, block=True)
    assert json.loads(cancelled.stdout)["state"] == "cancelled"


def test_through_redis_jobs_lists_every_tenant_and_says_so(api: Api, tmp_path: Path) -> None:
    with api.client("acme") as acme, api.client("other") as other:
        mine, theirs = acme.submit(REQUEST).id, other.submit(REQUEST).id
    env = {**base_env(), **{k: v for k, v in api.env.items() if k.startswith(("REDIS_", "S3_"))}}
    env |= {k: v for k, v in api.env.items() if k.startswith("AWS_")}
    listed = imagine("jobs", "--limit", "200", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == "jobs of every tenant (acme, other), newest first\n"
    rows = {line.split()[1]: line.split()[0] for line in listed.stdout.splitlines()}
    assert rows[mine] == "acme" and rows[theirs] == "other"
    one = imagine("jobs", "--tenant", "other", "--limit", "200", env=env, cwd=tmp_path)
    assert one.stderr == "jobs of tenant other, newest first\n"
    assert theirs in one.stdout and mine not in one.stdout
    # The same settings from the stack's file, job views (with presigned URLs) included.
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "stack.env").write_text(
        "".join(f"{k}={v}\n" for k, v in env.items() if k.startswith(("REDIS_", "S3_", "AWS_")))
    )
    shown = imagine("status", "--direct", "--json", theirs, env=base_env(), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tenant"] == "other"


def test_a_stale_stack_file_naming_a_stopped_redis_is_one_line(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{supervise.free_port()}/0"
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "stack.env").write_text(f"REDIS_URL={closed}\nS3_BUCKET=b\n")
    done = imagine("dlq", "list", env=base_env(), cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        f"imagine: cannot reach Redis at {closed} (REDIS_URL from .run/stack.env): "
    )
    assert done.stderr.endswith("is the stack that wrote it still running? (make run starts one)\n")


def test_no_settings_never_reach_the_machines_redis(tmp_path: Path) -> None:
    done = imagine("dlq", env=base_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "dlq reads Redis directly: set REDIS_URL" in done.stderr
    done = imagine("jobs", env=base_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "no connection settings: set IMAGINE_API_URL and IMAGINE_API_KEY" in done.stderr


def test_a_presigned_url_reaches_a_signature_checking_s3_unaltered(
    s3rver_bucket: tuple[str, str],
) -> None:
    from tests.integration.conftest import jpeg_bytes, s3rver_client

    endpoint, bucket = s3rver_bucket
    data = jpeg_bytes(64, 48)
    s3 = s3rver_client(endpoint)
    key = "jobs/4c1f/00 a+b=c.jpg"  # escapes in the path; the query holds %2F and friends
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    slot = {"slot": 0, "state": "stored", "finalKey": key, "bytes": len(data), "url": url}
    job = Job.from_dict({"id": "4c1f", "state": "succeeded", "slots": [slot]})
    # The API is never asked: the slot's URL is valid.
    with Client("http://127.0.0.1:9", "unused", retry=RetryPolicy(attempts=1)) as client:
        assert client.download_image(job, 0) == data
        # A signature S3 refuses (403) sends the client to the image endpoint for a fresh URL.
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        forged = Job.from_dict({**job.raw, "slots": [{**slot, "url": tampered}]})
        with pytest.raises(imagine_client.ConnectionFailed, match=r"127\.0\.0\.1:9"):
            client.download_image(forged, 0)


# ------------------------------------------------------------------ operator commands (Redis)


def operator_env(api: Api) -> dict[str, str]:
    """The pipeline's settings as an operator's shell holds them."""
    return {**base_env(), **{k: v for k, v in api.env.items() if k not in os_names()}}


def os_names() -> set[str]:
    return set(servers.scrubbed_environ())


def test_pause_resume_and_paused_say_what_they_did(api: Api, tmp_path: Path) -> None:
    env = operator_env(api)
    paused = imagine("pause", "--reason", "provider maintenance", env=env, cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == "submission paused: provider maintenance (imagine resume lifts it)\n"
    shown = json.loads(imagine("paused", env=env, cwd=tmp_path).stdout)
    assert shown["paused"] is True and shown["reason"] == "provider maintenance"
    resumed = imagine("resume", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("submission resumed;")
    assert json.loads(imagine("paused", env=env, cwd=tmp_path).stdout) == {"paused": False}


def test_events_prints_each_lifecycle_event_as_a_json_line(api: Api, tmp_path: Path) -> None:
    with api.client("acme") as acme:
        job = acme.submit(REQUEST)
        acme.cancel(job.id)
    listed = imagine("events", "--since", "0", env=operator_env(api), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = [event for event in events if event.get("jobId") == job.id]
    assert [event["type"] for event in mine] == ["job.created", "image.failed", "job.ended"]
    assert mine[1]["code"] == "cancelled" and mine[2]["state"] == "cancelled"
    assert all(event["id"] for event in events)


def test_callbacks_show_and_resend_answer_for_a_job_without_a_callback(
    api: Api, tmp_path: Path
) -> None:
    with api.client("acme") as acme:
        job = acme.submit(REQUEST)
    env = operator_env(api)
    shown = imagine("callbacks", "show", job.id, env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == []
    resent = imagine("callbacks", "resend", job.id, env=env, cwd=tmp_path)
    assert resent.returncode == 1
    assert resent.stderr.startswith("imagine: conflict:")
