"""The emulator's render_once switch: one drawing per size, format and quality, reused."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from PIL import Image

from infra.emulator import EmulatorConfig, close_app, create_app

pytestmark = pytest.mark.unit

KEY = "test-key"


@pytest.fixture
def app() -> Iterator[Flask]:
    flask_app = create_app(
        EmulatorConfig(api_keys=[KEY], deliveries=False, seed=7, render_once=True)
    )
    yield flask_app
    flask_app.extensions["runware_emulator"].wait_idle(10)
    close_app(flask_app)


def sync_image(app: Flask, prompt: str, width: int, height: int, fmt: str) -> bytes:
    body: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "xai:grok-imagine@image-pro",
        "positivePrompt": prompt,
        "width": width,
        "height": height,
        "outputFormat": fmt,
        "deliveryMethod": "sync",
        "outputType": "base64Data",
    }
    answer = app.test_client().post("/v1", json=[body], headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.get_json()
    return base64.b64decode(answer.get_json()["data"][0]["imageBase64Data"])


def test_reused_bytes_are_a_valid_image_of_the_asked_size(app: Flask) -> None:
    first = sync_image(app, "red fox", 1024, 1024, "JPG")
    second = sync_image(app, "blue whale", 1024, 1024, "JPG")
    assert first == second
    image = Image.open(io.BytesIO(first))
    assert (image.format, image.size) == ("JPEG", (1024, 1024))


def test_each_size_and_format_is_drawn_apart(app: Flask) -> None:
    data = sync_image(app, "red fox", 1408, 704, "PNG")
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("PNG", (1408, 704))


def test_off_by_default() -> None:
    assert EmulatorConfig().render_once is False
    config = EmulatorConfig()
    config.update({"render_once": "true"})
    assert config.render_once is True
