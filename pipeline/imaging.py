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


def inspect_image(data: bytes) -> ImageInfo:
    """Format and size of an image from its leading bytes (the header is enough)."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageRejected("the object is not a JPG, PNG or WEBP image (magic bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            pil_format = image.format
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageRejected(f"the {fmt} header cannot be read: {exc}") from None
    if PIL_FORMATS.get(pil_format or "") != fmt:
        raise ImageRejected(f"magic bytes say {fmt} but the header says {pil_format}")
    return ImageInfo(format=fmt, width=width, height=height)
