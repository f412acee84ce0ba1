"""Runware's own Python SDK (runware-sdk, REST transport) against the emulator, unchanged.

The SDK is written by the provider against the real service: if it reads the emulator's answers
the way it reads Runware's (async ACK, then getResponse polling, error items mapped to its error
codes), the emulator speaks the same wire contract.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from PIL import Image
from runware import Runware, RunwareError

from tests.integration import test_emulator_http as http_suite
from tests.integration.test_emulator_http import KEY, MODEL, Emulator

pytestmark = pytest.mark.integration

# The HTTP suite's emulator on a free port (API key KEY, seeded faults).
emulator = http_suite.emulator

T = TypeVar("T")


def with_sdk(
    emulator: Emulator, use: Callable[[Runware], Awaitable[T]], api_key: str = KEY, **config: Any
) -> T:
    async def main() -> T:
        client = Runware(
            api_key=api_key,
            transport="rest",
            http_base_url=f"{emulator.url}/v1",
            retry_delay=50,
            **config,
        )
        async with client:
            return await use(client)

    return asyncio.run(main())


def inference(**overrides: Any) -> dict[str, Any]:
    # The model is outside the SDK's registry, so the task type is named.
    params: dict[str, Any] = {
        "taskType": "imageInference",
        "model": MODEL,
        "positivePrompt": "a paper boat on a mirror lake",
        "includeCost": True,
    }
    params.update(overrides)
    return params


def sdk_error(emulator: Emulator, params: dict[str, Any], **config: Any) -> RunwareError:
    async def use(client: Runware) -> RunwareError:
        with pytest.raises(RunwareError) as caught:
            await client.run(params)
        return caught.value

    return with_sdk(emulator, use, **config)


def test_jpg_result(emulator: Emulator) -> None:
    async def use(client: Runware) -> list[dict[str, Any]]:
        return await client.run(inference(width=1024, height=1024, outputFormat="JPG"))

    (item,) = with_sdk(emulator, use)
    assert item["cost"] == pytest.approx(0.07)
    image = Image.open(io.BytesIO(emulator.client.get(item["imageURL"]).content))
    assert (image.format, image.size) == ("JPEG", (1024, 1024))
    ledger = emulator.control("ledger")
    assert ledger["totals"]["byTask"] == {item["taskUUID"]: {"count": 1, "cost": 0.07}}


def test_two_webp_results(emulator: Emulator) -> None:
    async def use(client: Runware) -> list[dict[str, Any]]:
        return await client.run(inference(resolution="1K", numberResults=2, outputFormat="WEBP"))

    items = with_sdk(emulator, use)
    assert len(items) == 2 and len({i["imageUUID"] for i in items}) == 2
    assert {i["taskUUID"] for i in items} == {items[0]["taskUUID"]}
    for item in items:
        image = Image.open(io.BytesIO(emulator.client.get(item["imageURL"]).content))
        assert image.format == "WEBP"
    assert emulator.control("ledger")["totals"]["count"] == 2


def test_invalid_api_key_is_an_auth_error(emulator: Emulator) -> None:
    error = sdk_error(emulator, inference(resolution="1K"), api_key="not-the-key")
    assert error.code == "auth"
    assert emulator.control("ledger")["totals"]["count"] == 0


@pytest.mark.parametrize(
    "size", [{"width": 1000, "height": 1000}, {"width": 1024}], ids=["unsupported", "half"]
)
def test_dimension_errors_are_validation_errors(emulator: Emulator, size: dict[str, int]) -> None:
    error = sdk_error(emulator, inference(**size))
    assert error.code == "validation"
    assert emulator.control("ledger")["totals"]["count"] == 0


def test_model_disabled_reads_as_the_provider_refusing(emulator: Emulator) -> None:
    emulator.configure(model_disabled=True)
    error = sdk_error(emulator, inference(resolution="1K"), max_retries=0)
    assert error.code == "provider"
    assert emulator.control("ledger")["totals"]["count"] == 0


def test_not_found_for_a_live_task_reads_as_not_found(emulator: Emulator) -> None:
    emulator.configure(not_found_for_live_task=1.0)
    error = sdk_error(emulator, inference(resolution="1K"), max_retries=0)
    assert error.code == "notFound"
    # The task was accepted and rendered all the same: the provider charged for it.
    emulator.flush()
    assert emulator.control("ledger")["totals"]["count"] == 1
