"""The `imagine` command through main(argv): settings, the jobs API over MockTransport, progress."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagine_client import Job, RetryPolicy
from infra import stack
from infra.demo import EXAMPLES_PATH
from pipeline import cli
from tests.unit.test_client import IMAGE, S3, Api, error, job_json, stored_slot

pytestmark = pytest.mark.unit

URL = "https://imagine.test"
API_ENV = {"IMAGINE_API_URL": URL, "IMAGINE_API_KEY": "dev-key"}


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries and polls without pauses: the answers below come at once."""
    monkeypatch.setattr(cli, "RETRY", RetryPolicy(attempts=3, backoff=0.0))
    monkeypatch.setattr(cli, "POLL", 0.0)


@pytest.fixture
def api() -> Api:
    return Api()


def run(
    api: Api | None,
    *argv: str,
    environ: dict[str, str] | None = None,
    cwd: Path | None = None,
    transport: Any = None,
) -> int:
    handler = transport or api
    http = httpx.Client(transport=httpx.MockTransport(handler)) if handler else None
    return cli.main(
        list(argv),
        environ=API_ENV if environ is None else environ,
        cwd=cwd or Path("/"),
        http=http,
    )


# ------------------------------------------------------------------ settings


def test_no_settings_at_all_is_refused_naming_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["jobs"], ["status", "x"], ["submit", str(EXAMPLES_PATH)], ["dlq"]):
        assert run(None, *command, environ={}, cwd=tmp_path) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1
        if command == ["dlq"]:
            assert "dlq reads Redis directly: set REDIS_URL" in err
        else:
            for name in ("IMAGINE_API_URL", "IMAGINE_API_KEY", "REDIS_URL", "make run"):
                assert name in err


def write_stack_env(directory: Path, **values: str) -> Path:
    path = directory / ".run" / "stack.env"
    path.parent.mkdir(parents=True)
    path.write_text("# a stack\n" + "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
    return path


def test_the_local_stacks_file_is_read_from_this_directory_or_above(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.jobs["j"] = job_json("j")
    write_stack_env(tmp_path, IMAGINE_API_URL=URL, IMAGINE_API_KEY="from 'the' file")
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    assert run(api, "status", "j", "--json", environ={}, cwd=below) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "j"
    assert api.requests[-1].headers["Authorization"] == "Bearer from 'the' file"


def test_the_environment_wins_over_the_file_whole(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stack_env(tmp_path, IMAGINE_API_URL="http://127.0.0.1:1", REDIS_URL="redis://x:1/0")
    assert run(api, "jobs", cwd=tmp_path) == 0
    assert str(api.requests[0].url).startswith(URL)
    assert "no jobs of the API key's tenant" in capsys.readouterr().err


def test_a_stale_stack_file_is_one_line_naming_it_and_what_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stack_env(tmp_path, IMAGINE_API_URL="http://127.0.0.1:9", IMAGINE_API_KEY="k")

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    assert run(None, "jobs", environ={}, cwd=tmp_path, transport=refused) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "imagine: cannot reach the jobs API at http://127.0.0.1:9 (IMAGINE_API_URL from "
        ".run/stack.env): [Errno 111] Connection refused; is the stack that wrote it still "
        "running? (make run starts one)\n"
    )


def test_a_reconciler_pass_prints_its_counts() -> None:
    from pipeline.recovery import ReconcilePass

    shown = cli._counts(ReconcilePass(looked=3, expired=1, model_probes_due={"a:model@1"}))
    assert json.loads(json.dumps(shown))["looked"] == 3
    assert "model_probes_due" not in shown


def test_options_are_taken_before_or_after_the_command(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    api.jobs["j"] = job_json("j")
    assert run(api, "status", "j", "--api-url", URL, "--api-key", "after", environ={}) == 0
    assert run(api, "--api-url", URL, "--api-key", "before", "status", "j", environ={}) == 0
    assert [r.headers["Authorization"] for r in api.requests] == ["Bearer after", "Bearer before"]


def test_a_url_without_a_key_says_which_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(None, "jobs", environ={"IMAGINE_API_URL": URL}) == 2
    assert capsys.readouterr().err == (
        f"imagine: IMAGINE_API_URL is {URL} but there is no API key: set IMAGINE_API_KEY\n"
    )


def test_tenant_needs_redis_when_only_the_api_is_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(None, "jobs", "--tenant", "ops") == 2
    assert "--tenant and --direct read Redis directly and need REDIS_URL" in capsys.readouterr().err


# ------------------------------------------------------------------ jobs


def test_jobs_over_the_api_says_whose_jobs_it_lists(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = {"jobs": [job_json("b", "running"), job_json("a", "succeeded")], "nextCursor": None}
    api.answers["GET /v1/jobs"] = [httpx.Response(200, json=listing)]
    assert run(api, "jobs") == 0
    out, err = capsys.readouterr()
    assert err == "jobs of tenant dev (the API key's), newest first\n"
    assert [line.split()[:2] for line in out.splitlines()] == [["b", "running"], ["a", "succeeded"]]


def test_a_bad_state_prints_the_apis_422_and_fails(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = error("validation_failed", 422, "the query is invalid", state=["Must be one of: …"])
    api.answers["GET /v1/jobs"] = [httpx.Response(422, json=refusal)]
    assert run(api, "jobs", "--state", "bogus") == 1
    out, err = capsys.readouterr()
    assert err == "imagine: validation_failed: the query is invalid\n"
    assert json.loads(out) == {"state": ["Must be one of: …"]}
    assert api.requests[0].url.params["state"] == "bogus"


def test_a_bad_state_through_redis_names_the_states_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        run(None, "jobs", "--state", "bogus", environ={"REDIS_URL": "redis://127.0.0.1:9/0"}) == 2
    )
    err = capsys.readouterr().err
    assert "--state 'bogus' is not a job state: one of queued, running, succeeded," in err


def test_an_api_error_is_printed_with_its_code(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answers["GET /v1/jobs/j"] = [
        httpx.Response(401, json=error("unauthorized", 401, "unknown API key"))
    ]
    assert run(api, "status", "j") == 1
    assert capsys.readouterr().err == "imagine: unauthorized: unknown API key\n"


# ------------------------------------------------------------------ submit


def test_the_model_page_examples_file_submits_every_request(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = json.loads(EXAMPLES_PATH.read_text())
    assert run(api, "submit", str(EXAMPLES_PATH)) == 0
    out, err = capsys.readouterr()
    jobs = json.loads(out)
    assert isinstance(jobs, list) and len(jobs) == len(examples) == 3
    sent = [json.loads(post.content) for post in api.posts()]
    assert sent == [example["request"] for example in examples]
    assert err.count("created for tenant dev") == 3


def test_example_picks_one_request_of_an_array(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = json.loads(EXAMPLES_PATH.read_text())
    assert run(api, "submit", str(EXAMPLES_PATH), "--example", "1") == 0
    job = json.loads(capsys.readouterr().out)
    assert isinstance(job, dict) and job["request"] == examples[1]["request"]
    assert run(api, "submit", str(EXAMPLES_PATH), "--example", "3") == 2
    assert capsys.readouterr().err == (
        f"imagine: --example 3: {EXAMPLES_PATH} holds 3 requests, 0 to 2\n"
    )


def test_a_refused_request_of_an_array_is_reported_and_the_others_go(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "requests.json"
    requests.write_text(
        json.dumps([{"positivePrompt": "a"}, {"width": 5}, {"positivePrompt": "c"}])
    )
    refusal = error("validation_failed", 422, "the request is invalid", width=["too small"])
    api.answers["POST /v1/jobs"] = [
        httpx.Response(202, json=job_json("a")),
        httpx.Response(422, json=refusal),
        httpx.Response(202, json=job_json("c")),
    ]
    assert run(api, "submit", str(requests), "--idempotency-key", "batch-7") == 1
    out, err = capsys.readouterr()
    assert [job["id"] for job in json.loads(out)] == ["a", "c"]
    assert (
        'request 1 refused: validation_failed: the request is invalid {"width": ["too small"]}'
        in err
    )
    keys = [post.headers["Idempotency-Key"] for post in api.posts()]
    assert keys == ["batch-7-0", "batch-7-1", "batch-7-2"]


def test_one_refused_request_prints_its_errors(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"width": 5}))
    refusal = error("validation_failed", 422, "the request is invalid", width=["too small"])
    api.answers["POST /v1/jobs"] = [httpx.Response(422, json=refusal)]
    assert run(api, "submit", str(request)) == 1
    out, err = capsys.readouterr()
    assert err == "imagine: validation_failed: the request is invalid\n"
    assert json.loads(out) == {"width": ["too small"]}


def test_submit_wait_without_a_terminal_prints_one_line_per_change(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"positivePrompt": "x", "numberResults": 2}))
    views = [
        ("running", ["submitted", "pending"]),
        ("running", ["submitted", "submitted"]),
        ("running", ["submitted", "submitted"]),
        ("running", ["stored", "submitted"]),
        ("succeeded", ["stored", "stored"]),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            slots = [{"slot": 0, "state": "pending"}, {"slot": 1, "state": "pending"}]
            return httpx.Response(202, json=job_json("j", "queued", slots))
        state, slot_states = views.pop(0) if len(views) > 1 else views[0]
        slots = [
            stored_slot(n, None) if s == "stored" else {"slot": n, "state": s}
            for n, s in enumerate(slot_states)
        ]
        return httpx.Response(200, json=job_json("j", state, slots))

    assert run(None, "submit", str(request), "--wait", transport=answer) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["state"] == "succeeded"
    assert "\r" not in err and "\x1b" not in err
    assert err.splitlines() == [
        "job j created for tenant dev",
        "job j: queued, 2 image(s)",
        "job j: queued -> running",
        "job j image 0: pending -> submitted",
        "job j image 1: pending -> submitted",
        "job j image 0: submitted -> stored (1024x1024 JPG)",
        "job j image 1: submitted -> stored (1024x1024 JPG)",
        "job j: running -> succeeded",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_redraws_its_lines_in_place() -> None:
    screen = Terminal()
    progress = cli.Progress(screen, clock=lambda: 0.0)
    queued = Job.from_dict(job_json("j", "queued", [{"slot": 0, "state": "pending"}]))
    stored = Job.from_dict(job_json("j", "succeeded", [stored_slot(0, None)]))
    other = Job.from_dict(job_json("k", "running", [{"slot": 0, "state": "submitted"}]))
    progress.show([queued, other])
    progress.show([stored, other])
    first, second = screen.getvalue().split("\x1b[2F")
    assert first == (
        "j  queued              0/1 stored     0s  0:pending\x1b[K\n"
        "k  running             0/1 stored     0s  0:submitted\x1b[K\n"
    )
    assert second.startswith("j  succeeded           1/1 stored     0s  0:stored\x1b[K\n")
    assert "\r" not in screen.getvalue()


def test_wait_for_stops_at_its_timeout_with_the_jobs_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "POLL", 0.5)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    running = Job.from_dict(job_json("j", "running"))
    progress = cli.Progress(io.StringIO())
    jobs = cli.wait_for(
        [running], lambda _: running, progress, 3.0, sleep=sleep, clock=lambda: now[0]
    )
    assert [job.state for job in jobs] == ["running"]
    assert slept == [0.5, 1.0, 1.5]


# ------------------------------------------------------------------ cancel, download


def test_cancel_and_download_over_the_api(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answers["POST /v1/jobs/j/cancel"] = [httpx.Response(200, json=job_json("j", "cancelled"))]
    assert run(api, "cancel", "j") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cancelled"

    api.jobs["d"] = job_json(
        "d", "partially_succeeded", [stored_slot(0, f"{S3}/0"), {"slot": 1, "state": "failed"}]
    )

    def with_s3(request: httpx.Request) -> httpx.Response:
        if request.url.host == "s3.test":
            return httpx.Response(200, content=IMAGE)
        return api(request)

    assert run(None, "download", "d", str(tmp_path / "out"), transport=with_s3) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'out' / 'd-00.jpg'}\n"
    assert (tmp_path / "out" / "d-00.jpg").read_bytes() == IMAGE
    assert err == "job d partially_succeeded: 1 of 2 image(s) not stored\n"


# ------------------------------------------------------------------ make run's summary


def test_the_stack_file_and_summary_tell_how_to_call_imagine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    local = stack.LocalStack(stack.StackConfig(workdir=tmp_path / ".run"))
    local.workdir.mkdir(parents=True)
    local.api_key = "the-dev-key"
    local.env = {"REDIS_URL": "redis://127.0.0.1:7001/0", "S3_BUCKET": "b", "S3_PREFIX": ""}
    local.env |= {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "k"}
    local.urls = {
        "REDIS_URL": "redis://127.0.0.1:7001/0",
        "S3_ENDPOINT_URL": "http://127.0.0.1:7002",
        "RECEIVER_URL": "http://127.0.0.1:7004",
        "EMULATOR_URL": "http://127.0.0.1:7003",
        "FLOWER_URL": "http://127.0.0.1:7005",
    }
    env_file = local.write_env_file()
    values = cli.read_env_file(env_file)
    assert values["IMAGINE_API_URL"] == "http://127.0.0.1:7004"
    assert values["IMAGINE_API_KEY"] == "the-dev-key"

    monkeypatch.chdir(tmp_path)
    stack._print_urls(local, env_file)
    out = capsys.readouterr().out
    assert (
        "imagine CLI" in out
        and "imagine submit infra/fixtures/model-page-examples.json --wait" in out
    )
    assert f"from .run/stack.env when run in {tmp_path.resolve()} or below" in out
