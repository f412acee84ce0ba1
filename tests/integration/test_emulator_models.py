"""The emulator's Grok Imagine family over HTTP: each model's sizes and price, and a retired one."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from infra.emulator import EmulatorConfig
from pipeline.errors import ProviderError
from pipeline.runware import classify
from tests.integration import test_emulator_http as http_suite
from tests.integration.test_emulator_http import Emulator, Receiver, task, wait_for

pytestmark = pytest.mark.integration

emulator = http_suite.emulator
receiver = http_suite.receiver

PRO = "xai:grok-imagine@image-pro"
IMAGE = "xai:grok-imagine@image"
QUALITY = "xai:grok-imagine@image-quality"
FAMILY = [PRO, IMAGE, QUALITY]
# Per image, then per image with two reference images (+$0.002 each).
PRICES = {PRO: (0.07, 0.074), IMAGE: (0.02, 0.024), QUALITY: (0.045, 0.049)}
SIZES_1K = {(1024, 1024), (1408, 768), (576, 1248), (1408, 704)}


def ledger(emulator: Emulator, task_uuid: str) -> list[dict[str, Any]]:
    params = {"taskUUID": task_uuid}
    response = emulator.client.get(f"{emulator.url}/_emulator/ledger", params=params)
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def delivered(emulator: Emulator, receiver: Receiver, body: dict[str, Any]) -> list[Any]:
    emulator.flush()
    hooks = wait_for(lambda: receiver.of("POST", f"/hook/{body['taskUUID']}"))
    return [hook.json()["data"][0] for hook in hooks]


def size_of(emulator: Emulator, item: dict[str, Any]) -> tuple[int, int]:
    image = Image.open(io.BytesIO(emulator.client.get(item["imageURL"]).content))
    return image.size


def test_all_three_models_are_served_by_default() -> None:
    assert EmulatorConfig().model == FAMILY
    assert EmulatorConfig().retired_models == []


@pytest.mark.parametrize("model", FAMILY)
def test_each_model_charges_its_own_price(
    emulator: Emulator, receiver: Receiver, model: str
) -> None:
    body = task(receiver, model=model, numberResults=2)
    assert emulator.submit(body).status_code == 200
    items = delivered(emulator, receiver, body)
    assert [item["cost"] for item in items] == [PRICES[model][0]] * 2
    assert {size_of(emulator, item) for item in items} == {(1024, 1024)}
    charged = ledger(emulator, body["taskUUID"])
    assert [(c["model"], c["cost"]) for c in charged] == [(model, PRICES[model][0])] * 2
    totals = emulator.control("ledger")["totals"]["byModel"]
    assert totals == {model: {"count": 2, "cost": round(2 * PRICES[model][0], 6)}}
    assert emulator.control(f"tasks/{body['taskUUID']}")["model"] == model


@pytest.mark.parametrize("model", FAMILY)
def test_editing_adds_the_input_image_price(
    emulator: Emulator, receiver: Receiver, model: str
) -> None:
    references = ["https://example.invalid/a.png", "https://example.invalid/b.png"]
    emulator.configure(fetch_reference_urls=False)
    body = task(receiver, model=model, inputs={"referenceImages": references})
    del body["width"], body["height"]
    assert emulator.submit(body).status_code == 200
    (item,) = delivered(emulator, receiver, body)
    assert item["cost"] == PRICES[model][1]
    assert [c["cost"] for c in ledger(emulator, body["taskUUID"])] == [PRICES[model][1]]


def test_the_image_model_serves_1k_only(emulator: Emulator, receiver: Receiver) -> None:
    for width, height in sorted(SIZES_1K):
        accepted = emulator.submit(task(receiver, model=IMAGE, width=width, height=height))
        assert accepted.status_code == 200, accepted.text
    refused = emulator.submit(task(receiver, model=IMAGE, width=2048, height=2048))
    (error,) = refused.json()["errors"]
    assert (error["code"], error["parameter"]) == ("unsupportedDimensions", "width")
    assert len(error["allowedValues"]) == 13 and "2048x2048" not in error["allowedValues"]
    two_k = task(receiver, model=IMAGE, resolution="2K")
    del two_k["width"], two_k["height"]
    (error,) = emulator.submit(two_k).json()["errors"]
    assert (error["code"], error["allowedValues"]) == ("invalidResolution", ["1K"])


@pytest.mark.parametrize("model", [PRO, QUALITY])
def test_pro_and_quality_serve_2k(emulator: Emulator, receiver: Receiver, model: str) -> None:
    body = task(receiver, model=model, resolution="2K")
    del body["width"], body["height"]
    assert emulator.submit(body).status_code == 200
    (item,) = delivered(emulator, receiver, body)
    assert size_of(emulator, item) == (2048, 2048)
    wide = task(receiver, model=model, width=2816, height=1536)
    assert emulator.submit(wide).status_code == 200


def test_a_retired_model_answers_as_unknown_to_the_api(
    emulator: Emulator, receiver: Receiver
) -> None:
    emulator.configure(retired_models=[PRO])
    body = task(receiver)
    refused = emulator.submit(body)
    assert refused.status_code == 400
    (error,) = refused.json()["errors"]
    assert (error["code"], error["parameter"], error["taskUUID"]) == (
        "invalidModel",
        "model",
        body["taskUUID"],
    )
    assert PRO in error["message"]
    assert emulator.control("tasks")["tasks"] == []
    assert emulator.control("ledger")["totals"]["count"] == 0
    # The family's other models are still served, at their own prices.
    other = task(receiver, model=IMAGE)
    assert emulator.submit(other).status_code == 200
    (item,) = delivered(emulator, receiver, other)
    assert item["cost"] == PRICES[IMAGE][0]
    # Brought back, the same taskUUID is accepted and charged once.
    emulator.configure(retired_models=[])
    assert emulator.submit(body).status_code == 200
    delivered(emulator, receiver, body)
    assert [c["cost"] for c in ledger(emulator, body["taskUUID"])] == [PRICES[PRO][0]]


def test_the_single_model_form_serves_that_model_only(
    emulator: Emulator, receiver: Receiver
) -> None:
    emulator.configure(model=PRO)
    assert emulator.control("config")["model"] == [PRO]
    assert emulator.submit(task(receiver)).status_code == 200
    (error,) = emulator.submit(task(receiver, model=QUALITY)).json()["errors"]
    assert (error["code"], error["parameter"]) == ("unknownModel", "model")
    config = EmulatorConfig.from_env({"EMULATOR_MODEL": IMAGE, "EMULATOR_RETIRED_MODELS": PRO})
    assert (config.model, config.retired_models) == ([IMAGE], [PRO])
    config = EmulatorConfig.from_env({"EMULATOR_MODEL": f"{PRO},{QUALITY}"})
    assert config.model == [PRO, QUALITY]


def test_model_switches_refuse_ids_outside_the_catalog(emulator: Emulator) -> None:
    for change in ({"model": "runware:101@1"}, {"retired_models": ["x"]}, {"model": []}):
        response = emulator.client.patch(f"{emulator.url}/_emulator/config", json=change)
        assert response.status_code == 400, change
    assert emulator.control("config")["model"] == FAMILY


def test_a_price_switch_overrides_every_model(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(price_per_image=0.5)
    body = task(receiver, model=IMAGE)
    assert emulator.submit(body).status_code == 200
    (item,) = delivered(emulator, receiver, body)
    assert item["cost"] == 0.5


def test_the_pipeline_reads_a_retired_model_as_a_model_fault(
    emulator: Emulator, receiver: Receiver
) -> None:
    emulator.configure(retired_models=[QUALITY])
    response = emulator.submit(task(receiver, model=QUALITY))
    (error,) = response.json()["errors"]
    assert classify(response.status_code, error["code"], error["parameter"]) == ProviderError.MODEL
