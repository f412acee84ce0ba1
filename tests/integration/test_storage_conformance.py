"""The same storage cases against every `ObjectStorage`: in memory, and S3 on moto's server."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from pipeline.config import Settings
from pipeline.errors import StorageError
from pipeline.interfaces import ObjectStorage
from pipeline.storage import MemoryObjectStorage, S3ObjectStorage

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WRONG_ETAG = '"0123456789abcdef0123456789abcdef"'
# moto 5.2.5 implements x-amz-copy-source-if-none-match but ignores x-amz-copy-source-if-match,
# so the local S3 server copies whatever the ETag; real S3 answers 412 PreconditionFailed.
MOTO_IGNORES_IF_MATCH = pytest.mark.xfail(
    strict=True, raises=pytest.fail.Exception, reason="moto's S3 server ignores CopySourceIfMatch"
)
STORAGES = ["memory", "s3"]


def png_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> Iterator[ObjectStorage]:
    """Each implementation in turn; S3 built from settings, the way the services build it."""
    if request.param == "memory":
        yield MemoryObjectStorage()
        return
    s3_server: str = request.getfixturevalue("s3_server")
    s3_bucket: str = request.getfixturevalue("s3_bucket")
    s3 = S3ObjectStorage.from_settings(
        Settings.from_env({"S3_ENDPOINT_URL": s3_server, "S3_BUCKET": s3_bucket}), timeout=10
    )
    yield s3
    s3._s3.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: the S3 bucket is shared by the session."""
    return f"conformance-{uuid.uuid4().hex}/"


def copy_error(
    storage: ObjectStorage, source: str, destination: str, if_match: str
) -> StorageError:
    with pytest.raises(StorageError) as raised:
        storage.copy(source, destination, if_match=if_match, content_type="image/png", metadata={})
    return raised.value


def test_head_of_a_missing_key_is_none(storage: ObjectStorage, prefix: str) -> None:
    assert storage.head(f"{prefix}missing.png") is None


def test_put_then_head_reports_size_etag_type_and_metadata(
    storage: ObjectStorage, prefix: str
) -> None:
    image = png_bytes()
    written = storage.put(
        f"{prefix}x.png",
        image,
        content_type="image/png",
        metadata={"imagine-job-id": "j1", "user-team": "maps"},
    )

    head = storage.head(f"{prefix}x.png")

    assert head is not None
    assert head.key == f"{prefix}x.png"
    assert head.size == len(image) == written.size
    # A single-part upload's ETag is the quoted MD5 of its bytes.
    assert head.etag == written.etag == f'"{hashlib.md5(image, usedforsecurity=False).hexdigest()}"'
    assert head.content_type == "image/png"
    assert head.metadata == {"imagine-job-id": "j1", "user-team": "maps"}
    assert storage.read(f"{prefix}x.png", max_bytes=len(image)) == image


def test_metadata_names_come_back_lower_cased(storage: ObjectStorage, prefix: str) -> None:
    storage.put(
        f"{prefix}x.bin",
        b"x",
        content_type="application/octet-stream",
        metadata={"Imagine-Slot": "3"},
    )

    head = storage.head(f"{prefix}x.bin")

    assert head is not None and head.metadata == {"imagine-slot": "3"}


def test_a_second_put_replaces_the_object(storage: ObjectStorage, prefix: str) -> None:
    first = storage.put(
        f"{prefix}m.json", b'{"v": 1}', content_type="application/json", metadata={"version": "1"}
    )
    second = storage.put(f"{prefix}m.json", b'{"v": 22}', content_type="application/json")

    head = storage.head(f"{prefix}m.json")

    assert head is not None and first.etag != second.etag == head.etag
    assert (head.size, head.metadata) == (9, {})
    assert storage.read(f"{prefix}m.json", max_bytes=100) == b'{"v": 22}'


def test_read_is_capped_by_max_bytes(storage: ObjectStorage, prefix: str) -> None:
    image = png_bytes()
    storage.put(f"{prefix}x.png", image, content_type="image/png")

    assert storage.read(f"{prefix}x.png", max_bytes=len(image)) == image
    with pytest.raises(StorageError) as raised:
        storage.read(f"{prefix}x.png", max_bytes=len(image) - 1)
    assert not raised.value.transient


def test_read_prefix_returns_the_first_bytes_or_what_exists(
    storage: ObjectStorage, prefix: str
) -> None:
    image = png_bytes()
    storage.put(f"{prefix}x.png", image, content_type="image/png")

    assert storage.read_prefix(f"{prefix}x.png", 8) == PNG_MAGIC
    assert storage.read_prefix(f"{prefix}x.png", 64) == image[:64]
    assert storage.read_prefix(f"{prefix}x.png", len(image) + 100) == image


def test_read_suffix_returns_the_last_bytes_or_the_whole_object(
    storage: ObjectStorage, prefix: str
) -> None:
    image = png_bytes()
    storage.put(f"{prefix}x.png", image, content_type="image/png")

    assert storage.read_suffix(f"{prefix}x.png", 12) == image[-12:]
    assert storage.read_suffix(f"{prefix}x.png", 12).endswith(b"IEND\xaeB`\x82")
    assert storage.read_suffix(f"{prefix}x.png", len(image) + 100) == image


def test_ranges_of_an_empty_object(storage: ObjectStorage, prefix: str) -> None:
    """A zero-byte upload: S3 answers a range from byte 0 with 416, a suffix with nothing."""
    storage.put(f"{prefix}empty", b"", content_type="application/octet-stream")

    with pytest.raises(StorageError) as raised:
        storage.read_prefix(f"{prefix}empty", 8)
    assert "InvalidRange" in raised.value.message and not raised.value.transient
    assert storage.read_suffix(f"{prefix}empty", 16) == b""
    assert storage.read(f"{prefix}empty", max_bytes=10) == b""


def test_read_start_is_the_head_and_the_first_bytes_in_one_call(
    storage: ObjectStorage, prefix: str
) -> None:
    image = png_bytes()
    written = storage.put(
        f"{prefix}x.png", image, content_type="image/png", metadata={"uploaded-by": "provider"}
    )

    start = storage.read_start(f"{prefix}x.png", 8)
    whole = storage.read_start(f"{prefix}x.png", len(image) + 100)

    assert start is not None and whole is not None
    head, first = start
    assert (head.key, head.size, head.etag) == (f"{prefix}x.png", len(image), written.etag)
    assert (head.content_type, head.metadata) == ("image/png", {"uploaded-by": "provider"})
    assert first == PNG_MAGIC
    assert whole == (head, image)
    assert storage.read_start(f"{prefix}missing.png", 8) is None


def test_read_start_of_an_empty_object_is_its_head_and_no_bytes(
    storage: ObjectStorage, prefix: str
) -> None:
    storage.put(f"{prefix}empty", b"", content_type="application/octet-stream")

    start = storage.read_start(f"{prefix}empty", 8)

    assert start is not None and (start[0].size, start[1]) == (0, b"")


def test_copy_given_the_source_size_reports_the_copy_without_reading_it_again(
    storage: ObjectStorage, prefix: str
) -> None:
    image = png_bytes()
    staged = storage.put(f"{prefix}staging/t", image, content_type="application/octet-stream")

    copied = storage.copy(
        f"{prefix}staging/t",
        f"{prefix}jobs/00.png",
        if_match=staged.etag,
        content_type="image/png",
        metadata={"imagine-slot": "0"},
        size=len(image),
    )

    head = storage.head(f"{prefix}jobs/00.png")
    assert head is not None
    assert (copied.size, copied.etag) == (head.size, head.etag) == (len(image), staged.etag)
    assert storage.read(f"{prefix}jobs/00.png", max_bytes=len(image)) == image


def test_delete_many_removes_every_key_absent_ones_included(
    storage: ObjectStorage, prefix: str
) -> None:
    for name in ("a", "b", "c"):
        storage.put(f"{prefix}{name}", b"x", content_type="application/octet-stream")

    storage.delete_many([f"{prefix}a", f"{prefix}b", f"{prefix}missing"])
    storage.delete_many([])

    assert storage.list_keys(prefix) == [f"{prefix}c"]


def test_copy_with_the_right_etag_writes_new_type_and_metadata(
    storage: ObjectStorage, prefix: str
) -> None:
    image = png_bytes()
    staging, final = f"{prefix}staging/job/task", f"{prefix}jobs/job/00.png"
    staged = storage.put(
        staging,
        image,
        content_type="application/octet-stream",
        metadata={"uploaded-by": "provider"},
    )

    copied = storage.copy(
        staging,
        final,
        if_match=staged.etag,
        content_type="image/png",
        metadata={"imagine-job-id": "job", "imagine-slot": "0"},
    )

    assert (copied.key, copied.size, copied.etag) == (final, len(image), staged.etag)
    assert copied.content_type == "image/png"
    assert copied.metadata == {"imagine-job-id": "job", "imagine-slot": "0"}
    head = storage.head(final)
    assert head is not None
    assert (head.size, head.etag, head.content_type, head.metadata) == (
        len(image),
        staged.etag,
        "image/png",
        {"imagine-job-id": "job", "imagine-slot": "0"},
    )
    assert storage.read(final, max_bytes=len(image)) == image
    # The source is left as it was: removing it is the caller's step.
    source = storage.head(staging)
    assert source is not None
    assert (source.content_type, source.metadata) == (
        "application/octet-stream",
        {"uploaded-by": "provider"},
    )


@pytest.mark.parametrize(
    "storage",
    [
        pytest.param("memory"),
        pytest.param("s3", marks=MOTO_IGNORES_IF_MATCH),
    ],
    indirect=True,
)
def test_copy_with_a_wrong_etag_raises_and_writes_nothing(
    storage: ObjectStorage, prefix: str
) -> None:
    staging, final = f"{prefix}staging/job/task", f"{prefix}jobs/job/00.png"
    storage.put(staging, png_bytes(), content_type="application/octet-stream")

    error = copy_error(storage, staging, final, WRONG_ETAG)

    # The staged object changed under us: worth another look, so it is a transient error.
    assert error.transient
    assert "PreconditionFailed" in error.message or "412" in error.message
    assert storage.head(final) is None


def test_copy_of_a_missing_source_raises_and_writes_nothing(
    storage: ObjectStorage, prefix: str
) -> None:
    error = copy_error(storage, f"{prefix}nothing", f"{prefix}dest", '"abc"')

    assert "NoSuchKey" in error.message and not error.transient
    assert storage.head(f"{prefix}dest") is None


@pytest.mark.parametrize("operation", ["read", "read_prefix", "read_suffix"])
def test_reading_a_missing_key_raises_the_domain_error(
    storage: ObjectStorage, prefix: str, operation: str
) -> None:
    calls: dict[str, Any] = {
        "read": lambda key: storage.read(key, max_bytes=100),
        "read_prefix": lambda key: storage.read_prefix(key, 8),
        "read_suffix": lambda key: storage.read_suffix(key, 8),
    }
    with pytest.raises(StorageError) as raised:
        calls[operation](f"{prefix}missing.png")

    assert "NoSuchKey" in raised.value.message and not raised.value.transient


def test_delete_is_idempotent(storage: ObjectStorage, prefix: str) -> None:
    storage.put(f"{prefix}a.png", png_bytes(), content_type="image/png")

    storage.delete(f"{prefix}a.png")
    storage.delete(f"{prefix}a.png")
    storage.delete(f"{prefix}never-written")

    assert storage.head(f"{prefix}a.png") is None
    assert storage.list_keys(prefix) == []


def test_list_keys_by_prefix(storage: ObjectStorage, prefix: str) -> None:
    manifest = b'{"manifestVersion": 1}'
    for key in ("jobs/j/manifest.json", "jobs/j/00.png", "jobs/j2/00.png", "staging/j/t"):
        storage.put(f"{prefix}{key}", manifest, content_type="application/json")

    assert sorted(storage.list_keys(f"{prefix}jobs/j/")) == [
        f"{prefix}jobs/j/00.png",
        f"{prefix}jobs/j/manifest.json",
    ]
    assert sorted(storage.list_keys(f"{prefix}jobs/j")) == [
        f"{prefix}jobs/j/00.png",
        f"{prefix}jobs/j/manifest.json",
        f"{prefix}jobs/j2/00.png",
    ]
    assert len(storage.list_keys(prefix)) == 4
    assert storage.list_keys(f"{prefix}nothing/") == []

    storage.delete(f"{prefix}jobs/j/00.png")

    assert storage.list_keys(f"{prefix}jobs/j/") == [f"{prefix}jobs/j/manifest.json"]


def test_presign_put_names_the_key_and_the_expiry(storage: ObjectStorage, prefix: str) -> None:
    url = storage.presign_put(f"{prefix}staging/job/task", expires_in=600)

    assert f"{prefix}staging/job/task" in url
    assert "X-Amz-Expires=600" in url


def test_check_passes_for_an_existing_bucket(storage: ObjectStorage) -> None:
    storage.check()
