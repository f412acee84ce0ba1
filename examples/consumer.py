"""Handle each finished job of an imagine-pipeline bucket once, from its manifest.

Lists `{prefix}jobs/*/manifest.json` (or reads the keys of an S3 event notification), handles
each (jobId, manifestVersion) once, downloads the images the manifest names as stored, checks
each against it (size, ETag, and the MD5 where the ETag is one) and keeps them under --out.
What was handled is recorded in a local state file, replaced atomically after each job, so the
consumer can be run again at any time: a job is handled again only when its manifest has a
higher version. Needs boto3 and nothing else; credentials come from boto3's usual chain.

    python examples/consumer.py --bucket my-images --out ./received --state ./consumer.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
from botocore.exceptions import ClientError

MANIFEST_NAME = "manifest.json"
# A single-part upload's ETag is the MD5 of its bytes; a multipart or SSE-KMS one is not.
MD5_ETAG = re.compile(r'^"?[0-9a-f]{32}"?$')


class Mismatch(Exception):
    """An object that is not what the manifest says: not recorded, tried again next run."""


@dataclass
class State:
    """What was handled: for each job, the manifest version and the manifest's ETag."""

    path: Path
    jobs: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls(path, {})
        return cls(path, json.loads(path.read_text())["jobs"])

    def handled(self, job_id: str) -> int:
        return int(self.jobs.get(job_id, {}).get("version", 0))

    def etag(self, job_id: str) -> str | None:
        found = self.jobs.get(job_id, {}).get("etag")
        return str(found) if found else None

    def record(self, job_id: str, version: int, etag: str) -> None:
        """Record a job as handled at `version`; the file is replaced whole, never half written."""
        self.jobs[job_id] = {"version": version, "etag": etag}
        write_atomically(self.path, json.dumps({"jobs": self.jobs}, indent=2).encode())


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def job_id_of(key: str) -> str:
    """The job id in `{prefix}jobs/{jobId}/manifest.json`."""
    return key.rsplit("/", 2)[-2]


def listed_manifests(s3: Any, bucket: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(key, ETag) of every manifest under the prefix."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}jobs/")
    for page in pages:
        for item in page.get("Contents", []):
            if item["Key"].endswith(f"/{MANIFEST_NAME}"):
                yield item["Key"], item["ETag"]


def notified_manifests(notification: dict[str, Any]) -> list[str]:
    """The manifest keys of an S3 event notification (keys arrive URL-encoded)."""
    keys = [unquote_plus(record["s3"]["object"]["key"]) for record in notification["Records"]]
    return [key for key in keys if key.endswith(f"/{MANIFEST_NAME}")]


@dataclass
class Consumer:
    s3: Any
    bucket: str
    out: Path
    state: State
    check_md5: bool = True

    def run(self, manifests: Iterator[tuple[str, str | None]]) -> tuple[list[str], list[str]]:
        """Handle each manifest not handled yet; returns (handled, failed) as 'jobId vN'."""
        handled: list[str] = []
        failed: list[str] = []
        for key, listed_etag in manifests:
            job_id = job_id_of(key)
            if listed_etag is not None and listed_etag == self.state.etag(job_id):
                continue  # the manifest handled last time, unchanged: not even read again
            try:
                done = self.consume(key)
            except Mismatch as exc:
                failed.append(f"{job_id}: {exc}")
                continue
            except ClientError as exc:
                failed.append(f"{job_id}: {key}: {exc.response['Error'].get('Code')}")
                continue
            if done:
                handled.append(done)
        return handled, failed

    def consume(self, key: str) -> str | None:
        answer = self.s3.get_object(Bucket=self.bucket, Key=key)
        manifest = json.loads(answer["Body"].read())
        job_id, version = manifest["jobId"], int(manifest["manifestVersion"])
        if version <= self.state.handled(job_id):
            return None  # this version (or a later one) was handled already
        self.handle(manifest)
        self.state.record(job_id, version, answer["ETag"])
        return f"{job_id} v{version}"

    def handle(self, manifest: dict[str, Any]) -> None:
        """The work done once per (jobId, manifestVersion): keep every stored image, checked,
        and the manifest beside them. Each file is written whole under a fixed name, so a run
        cut short before the state file records the job leaves nothing a re-run trips over."""
        directory = self.out / manifest["jobId"]
        for slot in manifest["slots"]:
            if slot["state"] == "stored":
                data = self.download(slot)
                write_atomically(directory / slot["finalKey"].rsplit("/", 1)[-1], data)
        write_atomically(directory / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
        stored = sum(slot["state"] == "stored" for slot in manifest["slots"])
        print(
            f"{manifest['jobId']} v{manifest['manifestVersion']} {manifest['state']}: "
            f"{stored} of {len(manifest['slots'])} images"
        )

    def download(self, slot: dict[str, Any]) -> bytes:
        """A stored image, checked against its manifest entry."""
        key, etag = slot["finalKey"], slot["etag"]
        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            raise Mismatch(f"{key}: {exc.response['Error'].get('Code')}") from None
        data: bytes = answer["Body"].read()
        if len(data) != slot["bytes"]:
            raise Mismatch(f"{key} has {len(data)} bytes, the manifest says {slot['bytes']}")
        if answer["ETag"] != etag:
            raise Mismatch(f"{key} has ETag {answer['ETag']}, the manifest says {etag}")
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if self.check_md5 and MD5_ETAG.match(etag) and digest != etag.strip('"'):
            raise Mismatch(f"{key}: the bytes read do not match their ETag")
        return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="", help="the pipeline's S3_PREFIX")
    parser.add_argument("--endpoint-url", help="an S3-compatible server instead of AWS")
    parser.add_argument("--region")
    parser.add_argument("--out", type=Path, default=Path("received"))
    parser.add_argument("--state", type=Path, default=Path("consumer-state.json"))
    parser.add_argument(
        "--notification",
        type=Path,
        help="handle the manifests of this S3 event notification (JSON) instead of listing",
    )
    parser.add_argument(
        "--no-md5", action="store_true", help="for SSE-KMS buckets, whose ETags are not MD5s"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s3 = boto3.client("s3", endpoint_url=args.endpoint_url, region_name=args.region)
    consumer = Consumer(s3, args.bucket, args.out, State.load(args.state), not args.no_md5)
    if args.notification:
        keys = notified_manifests(json.loads(args.notification.read_text()))
        manifests: Iterator[tuple[str, str | None]] = ((key, None) for key in keys)
    else:
        manifests = listed_manifests(s3, args.bucket, args.prefix)
    handled, failed = consumer.run(manifests)
    for problem in failed:
        print(f"not handled: {problem}", file=sys.stderr)
    print(f"handled {len(handled)} job(s), {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
