"""Image verification by magic bytes and header, and outbound URL checks against SSRF."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from pipeline.errors import ImageRejected
from pipeline.imaging import inspect_image, sniff_format
from pipeline.urls import UnsafeURL, check_outbound_url

pytestmark = pytest.mark.unit

PIL_NAMES = {"JPG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}


def encode(fmt: str, size: tuple[int, int] = (64, 48), noise: bool = False) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    if noise:
        rng = random.Random(7)
        image = Image.frombytes(
            "RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3))
        )
    buffer = io.BytesIO()
    image.save(buffer, format=PIL_NAMES[fmt])
    return buffer.getvalue()


# --- imaging ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPG", "PNG", "WEBP"])
@pytest.mark.parametrize("size", [(64, 48), (48, 64), (1, 1)])
def test_inspect_reads_format_and_size(fmt: str, size: tuple[int, int]) -> None:
    info = inspect_image(encode(fmt, size))
    assert (info.format, info.width, info.height) == (fmt, *size)


@pytest.mark.parametrize(
    ("mode", "options", "chunk"),
    [
        ("RGB", {"quality": 90}, b"VP8 "),
        ("RGB", {"lossless": True}, b"VP8L"),
        ("RGBA", {"quality": 90}, b"VP8X"),
    ],
)
@pytest.mark.parametrize("size", [(1280, 896), (3, 5), (16383, 1)])
def test_every_webp_encoding_reads_from_its_header(
    mode: str, options: dict[str, object], chunk: bytes, size: tuple[int, int]
) -> None:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="WEBP", **options)
    data = buffer.getvalue()
    assert data[12:16] == chunk
    info = inspect_image(data[:64])
    assert (info.format, info.width, info.height) == ("WEBP", *size)


@pytest.mark.parametrize("fmt", ["JPG", "PNG", "WEBP"])
def test_the_header_alone_is_enough(fmt: str) -> None:
    data = encode(fmt, (320, 200), noise=True)
    head = data[:1024]
    assert len(head) < len(data)
    info = inspect_image(head)
    assert (info.format, info.width, info.height) == (fmt, 320, 200)


@pytest.mark.parametrize(
    ("magic", "content"),
    [
        (b"\xff\xd8\xff\xe0", "PNG"),
        (b"\x89PNG\r\n\x1a\n", "JPG"),
        (b"RIFF\x00\x00\x00\x00WEBP", "PNG"),
        (b"\x89PNG\r\n\x1a\n", "WEBP"),
    ],
)
def test_magic_bytes_of_one_format_with_another_content_are_refused(
    magic: bytes, content: str
) -> None:
    with pytest.raises(ImageRejected):
        inspect_image(magic + encode(content))


def test_a_header_swapped_onto_another_body_is_refused() -> None:
    with pytest.raises(ImageRejected):
        inspect_image(encode("JPG")[:4] + encode("PNG")[4:])


@pytest.mark.parametrize("fmt", ["JPG", "PNG", "WEBP"])
@pytest.mark.parametrize("length", [3, 12, 20])
def test_a_truncated_header_is_refused(fmt: str, length: int) -> None:
    with pytest.raises(ImageRejected):
        inspect_image(encode(fmt)[:length])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a" + bytes(40),
        bytes(random.Random(1).getrandbits(8) for _ in range(512)),
        b"<html>not an image</html>",
    ],
)
def test_random_or_foreign_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ImageRejected, match="magic bytes"):
        inspect_image(data)


def test_valid_magic_before_random_bytes_is_refused() -> None:
    with pytest.raises(ImageRejected):
        inspect_image(
            b"\x89PNG\r\n\x1a\n" + bytes(random.Random(2).getrandbits(8) for _ in range(256))
        )


@pytest.mark.parametrize(("fmt", "expected"), [("JPG", "JPG"), ("PNG", "PNG"), ("WEBP", "WEBP")])
def test_sniff_format(fmt: str, expected: str) -> None:
    assert sniff_format(encode(fmt)[:16]) == expected
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None


# --- outbound URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://im.runware.ai/a.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "im.runware.ai/a.jpg",
    ],
)
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL, match="scheme"):
        check_outbound_url(url, allowed_hosts=["im.runware.ai"], allow_private=True)


def test_a_url_without_host_is_refused() -> None:
    with pytest.raises(UnsafeURL, match="no host"):
        check_outbound_url("http:///path", allowed_hosts=None, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/a.jpg",
        "https://im.runware.ai.evil.example/",
        "https://runware.ai/a.jpg",
        "http://10.0.0.1/a.jpg",
    ],
)
def test_hosts_outside_the_allow_list_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL, match="allow-list"):
        check_outbound_url(url, allowed_hosts=["im.runware.ai"], allow_private=True)


def test_an_allowed_host_passes() -> None:
    check_outbound_url(
        "https://IM.runware.ai/image/a.jpg", allowed_hosts=["im.runware.ai"], allow_private=True
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cb",
        "http://127.0.0.1:8000/cb",
        "http://10.0.0.1/cb",
        "http://192.168.1.1/cb",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/cb",
        "http://0.0.0.0/cb",
        "http://[fe80::1]/cb",
    ],
)
def test_private_addresses_are_refused_by_default(url: str) -> None:
    with pytest.raises(UnsafeURL, match="non-public"):
        check_outbound_url(url, allowed_hosts=None, allow_private=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/cb", "http://10.0.0.1/cb"])
def test_private_addresses_pass_when_allowed(url: str) -> None:
    check_outbound_url(url, allowed_hosts=None, allow_private=True)


def test_a_public_address_passes() -> None:
    check_outbound_url("https://93.184.216.34/cb", allowed_hosts=None, allow_private=False)


def test_an_allowed_host_on_a_private_address_is_still_refused() -> None:
    with pytest.raises(UnsafeURL, match="non-public"):
        check_outbound_url(
            "http://127.0.0.1:9000/a.jpg", allowed_hosts=["127.0.0.1:9000"], allow_private=False
        )


def test_the_allow_list_may_name_a_port() -> None:
    hosts = ["127.0.0.1:9000"]
    check_outbound_url("http://127.0.0.1:9000/image/a.jpg", allowed_hosts=hosts, allow_private=True)
    for url in ("http://127.0.0.1:9001/image/a.jpg", "http://127.0.0.1/image/a.jpg"):
        with pytest.raises(UnsafeURL, match="allow-list"):
            check_outbound_url(url, allowed_hosts=hosts, allow_private=True)
