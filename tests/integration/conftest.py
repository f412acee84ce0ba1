"""An S3 server that checks SigV4 presigned signatures (s3rver), installed into .cache on first use.

moto's server does not check signatures, and neither does s3rver 3.7.1, the last release of the
original package (its SigV4 path accepts any signature of a known access key). The
@20minutes/s3rver fork is the same server with SigV4 verification implemented: method, path,
query and signed headers are all checked, so it can tell a URL's scope.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import servers, supervise

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
            pytest.fail(f"{tool} is not on PATH; the presigned-URL tests need node and npm to run "
                        f"s3rver", pytrace=False)
    prefix.mkdir(parents=True, exist_ok=True)
    command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
               f"{S3RVER_PACKAGE}@{S3RVER_VERSION}"]
    # Two pytest runs on one fresh checkout must not run npm in the same directory at once.
    with (prefix.parent / "s3rver.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(prefix) != S3RVER_VERSION:
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                      check=False)
            except subprocess.TimeoutExpired:
                pytest.fail(f"`{' '.join(command)}` did not finish in 300 s", pytrace=False)
            if done.returncode != 0 or _installed_version(prefix) != S3RVER_VERSION:
                output = (done.stdout + done.stderr).strip()[-2000:]
                pytest.fail(f"could not install s3rver: `{' '.join(command)}` exited "
                            f"{done.returncode}\n{output}", pytrace=False)
    return prefix / "node_modules" / S3RVER_PACKAGE


def s3rver_client(endpoint: str) -> Any:
    """A boto3 client of s3rver with its built-in account, for setting up and checking a bucket."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=S3RVER_REGION,
                        aws_access_key_id=S3RVER_KEY, aws_secret_access_key=S3RVER_KEY,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


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
            "s3rver", ["node", "-e", _LAUNCH, str(package), "127.0.0.1", str(port), str(data)],
            log_dir=tmp_workdir / "logs", env=env, cwd=data,
        ).start()
        try:
            supervise.wait_for_http(f"http://127.0.0.1:{port}/", 30, expect_status=None,
                                    process=process)
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
