"""Real images of the requested size and format, different for every prompt, seed and index."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import random

from PIL import Image, ImageDraw, UnidentifiedImageError

CONTENT_TYPES = {"JPG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXTENSIONS = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}
PIL_FORMATS = {"JPG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}
FORMAT_BY_PIL = {"JPEG": "JPG", "PNG": "PNG", "WEBP": "WEBP", "GIF": "PNG", "BMP": "PNG"}
MAX_UPLOAD_SIDE = 2048


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def render_image(
    prompt: str, seed: int, index: int, width: int, height: int, output_format: str, quality: int
) -> bytes:
    """Encode a gradient with shapes drawn from sha256(prompt, seed, index)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    rng = random.Random(digest)
    # The gradient is drawn small and scaled up: drawing at 2K in Python would cost seconds.
    small_w, small_h = max(1, width // 8), max(1, height // 8)
    mask = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270)))
    mask = mask.resize((small_w, small_h))
    image = Image.composite(
        Image.new("RGB", (small_w, small_h), _colour(rng)),
        Image.new("RGB", (small_w, small_h), _colour(rng)),
        mask,
    )
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(6, 14)):
        x0, y0 = rng.randrange(small_w), rng.randrange(small_h)
        x1 = min(small_w, x0 + rng.randint(2, max(3, small_w // 2)))
        y1 = min(small_h, y0 + rng.randint(2, max(3, small_h // 2)))
        shape = rng.choice(("ellipse", "rectangle", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_colour(rng), width=rng.randint(1, 4))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    return encode(image, output_format, quality)


@functools.lru_cache(maxsize=64)
def reused_image(width: int, height: int, output_format: str, quality: int) -> bytes:
    """One rendered image per size, format and quality, drawn once (the `render_once` switch)."""
    return render_image("render_once", 0, 0, width, height, output_format, quality)


def returned_size(setting: str | None, width: int, height: int) -> tuple[int, int]:
    """The size an image comes back at under the `returned_size` switch."""
    if setting is None:
        return width, height
    if setting == "swap":
        return height, width
    fixed_width, _, fixed_height = setting.lower().partition("x")
    return int(fixed_width), int(fixed_height)


def encode(image: Image.Image, output_format: str, quality: int) -> bytes:
    """Bytes of `image` in JPG (quality), PNG (fast compression) or WEBP (quality)."""
    buffer = io.BytesIO()
    if output_format == "PNG":
        # The default compression level costs about 1.5 s per 2K image.
        image.save(buffer, "PNG", compress_level=1)
    elif output_format == "WEBP":
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def decode_image_string(value: str) -> bytes | None:
    """Bytes of a data URI or bare base64 image string; None when it is neither."""
    payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of encoded image bytes; None when Pillow cannot read them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def normalise_upload(data: bytes) -> tuple[bytes, str] | None:
    """An uploaded image as stored: downscaled to 2048 px at most; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            pil_format = image.format or "PNG"
            fmt = FORMAT_BY_PIL.get(pil_format, "PNG")
            if max(image.size) <= MAX_UPLOAD_SIDE and pil_format in PIL_FORMATS.values():
                return data, fmt
            image.thumbnail((MAX_UPLOAD_SIDE, MAX_UPLOAD_SIDE))
            converted = image.convert("RGBA" if fmt == "PNG" else "RGB")
            return encode(converted, fmt, 95), fmt
    except (UnidentifiedImageError, OSError, ValueError):
        return None
