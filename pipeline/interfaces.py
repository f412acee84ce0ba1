"""Protocols the use cases depend on, so adapters can be swapped by settings and faked in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ObjectHead:
    key: str
    size: int
    etag: str
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStorage(Protocol):
    """The few S3 operations the pipeline needs; errors become `StorageError`."""

    def presign_put(self, key: str, expires_in: int) -> str: ...

    def head(self, key: str) -> ObjectHead | None: ...

    def read(self, key: str, max_bytes: int) -> bytes: ...

    def read_prefix(self, key: str, length: int) -> bytes: ...

    def read_suffix(self, key: str, length: int) -> bytes: ...

    def copy(self, source: str, destination: str, *, if_match: str, content_type: str,
             metadata: dict[str, str]) -> ObjectHead: ...

    def put(self, key: str, data: bytes, *, content_type: str,
            metadata: dict[str, str] | None = None) -> ObjectHead: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def check(self) -> None: ...


class Dispatcher(Protocol):
    """Sends nudges to workers; messages carry ids only."""

    def submit_job(self, job_id: str, countdown: float = 0) -> None: ...

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None: ...

    def notify_job(self, job_id: str) -> None: ...
