"""Recognise an image's format from its first bytes and read its size without decoding it all."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pipeline.errors import ImageRejected

PIL_FORMATS = {"JPEG": "JPG", "PNG": "PNG", "WEBP": "WEBP"}


@dataclass(frozen=True)
class ImageInfo:
    format: str  # JPG | PNG | WEBP
    width: int
    height: int


def sniff_format(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_complete(fmt: str, size: int, head: bytes, tail: bytes) -> None:
    """Refuse a file cut short: each format's end marker (or declared length) must match."""
    if fmt == "JPG" and not tail.endswith(b"\xff\xd9"):
        raise ImageRejected("the JPG has no end-of-image marker (truncated upload?)")
    if fmt == "PNG" and not tail.endswith(b"IEND\xaeB`\x82"):
        raise ImageRejected("the PNG has no IEND chunk (truncated upload?)")
    if fmt == "WEBP" and int.from_bytes(head[4:8], "little") + 8 != size:
        raise ImageRejected("the WEBP's RIFF length does not match its size (truncated upload?)")


def _webp_size(head: bytes) -> tuple[int, int]:
    """Canvas size from a WebP's first chunk: Pillow needs the whole file to open a WebP."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
    elif chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        height = int.from_bytes(head[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    else:
        raise ImageRejected("the WEBP header cannot be read: no VP8, VP8L or VP8X chunk")
    if not width or not height:
        raise ImageRejected("the WEBP header declares an empty image")
    return width, height


def inspect_image(data: bytes) -> ImageInfo:
    """Format and size of an image from its leading bytes (the header is enough)."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageRejected("the object is not a JPG, PNG or WEBP image (magic bytes)")
    if fmt == "WEBP":
        width, height = _webp_size(data[:32])
        return ImageInfo(format=fmt, width=width, height=height)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            pil_format = image.format
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageRejected(f"the {fmt} header cannot be read: {exc}") from None
    if PIL_FORMATS.get(pil_format or "") != fmt:
        raise ImageRejected(f"magic bytes say {fmt} but the header says {pil_format}")
    return ImageInfo(format=fmt, width=width, height=height)
