"""Object storage behind the `ObjectStorage` interface (S3, and in memory), and the key layout."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.catalog import FORMAT_EXTENSIONS
from pipeline.config import Settings
from pipeline.dependencies import S3_ERRORS, s3_unavailable
from pipeline.errors import StorageError
from pipeline.interfaces import ObjectHead, ObjectStorage

if TYPE_CHECKING:  # the stubs are a dev dependency; boto3 builds the client at run time
    from mypy_boto3_s3 import S3Client

MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
DELETE_BATCH = 1000  # S3's DeleteObjects takes at most 1,000 keys
TRANSIENT_CODES = {
    "500",
    "502",
    "503",
    "504",
    "SlowDown",
    "InternalError",
    "RequestTimeout",
    "ServiceUnavailable",
    "PreconditionFailed",
    "412",
}


@dataclass(frozen=True)
class KeyLayout:
    """Where each object of a job lives in the bucket."""

    prefix: str = ""

    def staging(self, job_id: str, task_uuid: str) -> str:
        return f"{self.prefix}staging/{job_id}/{task_uuid}"

    def final(self, job_id: str, slot: int, output_format: str) -> str:
        return f"{self.prefix}jobs/{job_id}/{slot:02d}.{FORMAT_EXTENSIONS[output_format]}"

    def manifest(self, job_id: str) -> str:
        return f"{self.prefix}jobs/{job_id}/manifest.json"

    def job_prefix(self, job_id: str) -> str:
        return f"{self.prefix}jobs/{job_id}/"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _coded_error(action: str, key: str, code: str) -> StorageError:
    return StorageError(f"S3 {action} of {key} failed: {code}", transient=code in TRANSIENT_CODES)


def _total_size(content_range: str | None, received: int) -> int:
    """The object's size from a ranged answer's Content-Range ("bytes 0-9/1234")."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else received


def _storage_error(action: str, key: str, exc: Exception) -> StorageError:
    if isinstance(exc, ClientError):
        return _coded_error(action, key, _error_code(exc))
    if isinstance(exc, S3_ERRORS):
        return s3_unavailable(action, key, exc)
    return StorageError(f"S3 {action} of {key} failed: {type(exc).__name__}", transient=True)


class S3ObjectStorage:
    """Object storage on S3 or any S3-compatible server."""

    def __init__(self, client: S3Client, bucket: str, *, presigner: S3Client | None = None) -> None:
        self._s3 = client
        # Signs URLs for Runware and API clients; only its endpoint differs from the client's.
        self._presigner = presigner or client
        self.bucket = bucket

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        connect_timeout: float = 5.0,
    ) -> S3ObjectStorage:
        config = Config(
            signature_version="s3v4",
            connect_timeout=min(timeout, connect_timeout),
            read_timeout=timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        )
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=config,
        )
        presigner = None
        if settings.s3_public_endpoint_url:
            # Signing is local: this client never connects, its endpoint only names the host.
            presigner = boto3.client(
                "s3",
                endpoint_url=settings.s3_public_endpoint_url,
                region_name=settings.s3_region,
                config=config.merge(Config(s3={"addressing_style": "path"})),
            )
        return cls(client, settings.s3_bucket, presigner=presigner)

    def presign_put(self, key: str, expires_in: int) -> str:
        # No ContentType in the signature: the header Runware's PUT carries is not documented.
        url: str = self._presigner.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )
        return url

    def presign_get(self, key: str, expires_in: int) -> str:
        url: str = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )
        return url

    def head(self, key: str) -> ObjectHead | None:
        try:
            answer = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in MISSING_CODES:
                return None
            raise _storage_error("head", key, exc) from None
        except BotoCoreError as exc:
            raise _storage_error("head", key, exc) from None
        return ObjectHead(
            key=key,
            size=int(answer["ContentLength"]),
            etag=answer["ETag"],
            content_type=answer.get("ContentType"),
            metadata=dict(answer.get("Metadata") or {}),
        )

    def read(self, key: str, max_bytes: int) -> bytes:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=key)
            body = answer["Body"]
            data: bytes = body.read(max_bytes + 1)
            body.close()
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("read", key, exc) from None
        if len(data) > max_bytes:
            raise StorageError(f"{key} is larger than {max_bytes} bytes", transient=False)
        return data

    def read_prefix(self, key: str, length: int) -> bytes:
        return self._read_range(key, f"bytes=0-{length - 1}")

    def read_suffix(self, key: str, length: int) -> bytes:
        return self._read_range(key, f"bytes=-{length}")

    def read_start(self, key: str, length: int) -> tuple[ObjectHead, bytes] | None:
        # A ranged GET answers with the object's ETag and total size: the HEAD it replaces.
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{length - 1}")
            data: bytes = answer["Body"].read()
        except ClientError as exc:
            code = _error_code(exc)
            if code in MISSING_CODES:
                return None
            if code == "InvalidRange":  # an empty object has no first byte
                head = self.head(key)
                return None if head is None else (head, b"")
            raise _coded_error("read", key, code) from None
        except BotoCoreError as exc:
            raise _storage_error("read", key, exc) from None
        head = ObjectHead(
            key=key,
            size=_total_size(answer.get("ContentRange"), len(data)),
            etag=answer["ETag"],
            content_type=answer.get("ContentType"),
            metadata=dict(answer.get("Metadata") or {}),
        )
        return head, data[:length]

    def _read_range(self, key: str, byte_range: str) -> bytes:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            data: bytes = answer["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("read", key, exc) from None
        return data

    def copy(
        self,
        source: str,
        destination: str,
        *,
        if_match: str,
        content_type: str,
        metadata: dict[str, str],
        size: int | None = None,
    ) -> ObjectHead:
        try:
            answer = self._s3.copy_object(
                Bucket=self.bucket,
                Key=destination,
                CopySource={"Bucket": self.bucket, "Key": source},
                CopySourceIfMatch=if_match,
                MetadataDirective="REPLACE",
                ContentType=content_type,
                Metadata=metadata,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("copy", source, exc) from None
        etag = answer.get("CopyObjectResult", {}).get("ETag")
        if size is not None and etag:
            # The copy wrote the bytes whose ETag was checked: their size is the source's.
            return ObjectHead(
                key=destination, size=size, etag=etag, content_type=content_type, metadata=metadata
            )
        head = self.head(destination)
        if head is None:
            raise StorageError(f"S3 copy to {destination} left no object", transient=True)
        return head

    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> ObjectHead:
        try:
            answer = self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=metadata or {},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("put", key, exc) from None
        return ObjectHead(
            key=key,
            size=len(data),
            etag=answer["ETag"],
            content_type=content_type,
            metadata=metadata or {},
        )

    def delete(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("delete", key, exc) from None

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                answer = self._s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except (ClientError, BotoCoreError) as exc:
                raise _storage_error("delete", batch[0], exc) from None
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise _coded_error("delete", first.get("Key", batch[0]), first.get("Code", ""))

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("list", prefix, exc) from None
        return keys

    def check(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("head_bucket", self.bucket, exc) from None


@dataclass(frozen=True)
class _MemoryObject:
    data: bytes
    etag: str
    content_type: str | None
    metadata: dict[str, str] = field(default_factory=dict)


class MemoryObjectStorage:
    """Object storage in one process's memory that answers like S3 (ETags, conditions, ranges)."""

    def __init__(
        self, bucket: str = "memory", *, endpoint: str = "http://memory-storage.invalid"
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self._objects: dict[str, _MemoryObject] = {}
        self._lock = threading.Lock()

    def presign_put(self, key: str, expires_in: int) -> str:
        # Nothing listens at this URL: it names the key and expiry so a test can act as uploader.
        return f"{self.endpoint}/{self.bucket}/{quote(key)}?X-Amz-Expires={expires_in}"

    def presign_get(self, key: str, expires_in: int) -> str:
        return f"{self.endpoint}/{self.bucket}/{quote(key)}?X-Amz-Expires={expires_in}&method=GET"

    def _get(self, action: str, key: str) -> _MemoryObject:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise _coded_error(action, key, "NoSuchKey")
        return found

    def _set(
        self, key: str, data: bytes, content_type: str | None, metadata: dict[str, str]
    ) -> ObjectHead:
        # Single-part uploads: S3's ETag is the quoted MD5 of the bytes; metadata names come
        # back lower-cased, since they travel as HTTP headers.
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        stored = _MemoryObject(
            data=bytes(data),
            etag=f'"{digest}"',
            content_type=content_type,
            metadata={name.lower(): value for name, value in metadata.items()},
        )
        with self._lock:
            self._objects[key] = stored
        return self._head(key, stored)

    @staticmethod
    def _head(key: str, stored: _MemoryObject) -> ObjectHead:
        return ObjectHead(
            key=key,
            size=len(stored.data),
            etag=stored.etag,
            content_type=stored.content_type,
            metadata=dict(stored.metadata),
        )

    def head(self, key: str) -> ObjectHead | None:
        with self._lock:
            found = self._objects.get(key)
        return None if found is None else self._head(key, found)

    def read(self, key: str, max_bytes: int) -> bytes:
        data = self._get("read", key).data
        if len(data) > max_bytes:
            raise StorageError(f"{key} is larger than {max_bytes} bytes", transient=False)
        return data

    def read_prefix(self, key: str, length: int) -> bytes:
        data = self._get("read", key).data
        if not data:
            # A range starting at byte 0 of an empty object is unsatisfiable: S3 answers 416.
            raise _coded_error("read", key, "InvalidRange")
        return data[:length]

    def read_start(self, key: str, length: int) -> tuple[ObjectHead, bytes] | None:
        with self._lock:
            found = self._objects.get(key)
        return None if found is None else (self._head(key, found), found.data[:length])

    def read_suffix(self, key: str, length: int) -> bytes:
        # A suffix longer than the object is the whole object (an empty one included).
        return self._get("read", key).data[-length:]

    def copy(
        self,
        source: str,
        destination: str,
        *,
        if_match: str,
        content_type: str,
        metadata: dict[str, str],
        size: int | None = None,
    ) -> ObjectHead:
        found = self._get("copy", source)
        if if_match.strip() != "*" and if_match.strip().strip('"') != found.etag.strip('"'):
            raise _coded_error("copy", source, "PreconditionFailed")
        return self._set(destination, found.data, content_type, metadata)

    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> ObjectHead:
        written = self._set(key, data, content_type, metadata or {})
        # What S3ObjectStorage.put returns: the metadata as sent, not as S3 will report it.
        return ObjectHead(
            key=key,
            size=written.size,
            etag=written.etag,
            content_type=content_type,
            metadata=metadata or {},
        )

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def delete_many(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    def list_keys(self, prefix: str) -> list[str]:
        # S3 lists in UTF-8 byte order, which is the code point order `sorted` gives.
        with self._lock:
            return sorted(key for key in self._objects if key.startswith(prefix))

    def check(self) -> None:
        return None


# The granularity of inline S3 timeouts: one client per step, built on first use.
INLINE_TIMEOUT_STEP = 0.25
# While an HTTP caller waits, an S3 that does not accept a connection is down: answer 503.
REQUEST_PATH_CONNECT_TIMEOUT = 0.5


class BudgetedObjectStorage:
    """Object storage for work done while an HTTP caller waits: each call is given what is left
    of one total time budget as its timeout (at most `timeout`), and no call starts once the
    budget is spent (a transient `StorageError`: a worker takes over)."""

    def __init__(
        self,
        storage_for: Callable[[float], ObjectStorage],
        deadline: float,
        timeout: float,
    ) -> None:
        self._storage_for = storage_for
        self._deadline = deadline  # time.monotonic()
        self._timeout = timeout

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _storage(self) -> ObjectStorage:
        remaining = self.remaining()
        if remaining < INLINE_TIMEOUT_STEP:
            raise StorageError("the inline promotion's time budget is spent", transient=True)
        return self._storage_for(min(self._timeout, remaining))

    def presign_put(self, key: str, expires_in: int) -> str:
        return self._storage().presign_put(key, expires_in)

    def presign_get(self, key: str, expires_in: int) -> str:
        return self._storage().presign_get(key, expires_in)

    def head(self, key: str) -> ObjectHead | None:
        return self._storage().head(key)

    def read(self, key: str, max_bytes: int) -> bytes:
        return self._storage().read(key, max_bytes)

    def read_prefix(self, key: str, length: int) -> bytes:
        return self._storage().read_prefix(key, length)

    def read_suffix(self, key: str, length: int) -> bytes:
        return self._storage().read_suffix(key, length)

    def read_start(self, key: str, length: int) -> tuple[ObjectHead, bytes] | None:
        return self._storage().read_start(key, length)

    def copy(
        self,
        source: str,
        destination: str,
        *,
        if_match: str,
        content_type: str,
        metadata: dict[str, str],
        size: int | None = None,
    ) -> ObjectHead:
        return self._storage().copy(
            source,
            destination,
            if_match=if_match,
            content_type=content_type,
            metadata=metadata,
            size=size,
        )

    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> ObjectHead:
        return self._storage().put(key, data, content_type=content_type, metadata=metadata)

    def delete(self, key: str) -> None:
        self._storage().delete(key)

    def delete_many(self, keys: list[str]) -> None:
        self._storage().delete_many(keys)

    def list_keys(self, prefix: str) -> list[str]:
        return self._storage().list_keys(prefix)

    def check(self) -> None:
        self._storage().check()


def s3_storage_by_timeout(settings: Settings) -> Callable[[float], ObjectStorage]:
    """S3 storages making one attempt each, by timeout rounded down to INLINE_TIMEOUT_STEP
    (botocore fixes timeouts per client, so a few clients are kept, one per step)."""
    clients: dict[int, S3ObjectStorage] = {}
    lock = threading.Lock()

    def storage_for(seconds: float) -> ObjectStorage:
        steps = max(1, int(seconds / INLINE_TIMEOUT_STEP))
        with lock:
            if steps not in clients:
                # botocore's max_attempts counts retries after the first try: 0 = one try.
                clients[steps] = S3ObjectStorage.from_settings(
                    settings,
                    timeout=steps * INLINE_TIMEOUT_STEP,
                    attempts=0,
                    connect_timeout=REQUEST_PATH_CONNECT_TIMEOUT,
                )
            return clients[steps]

    return storage_for
