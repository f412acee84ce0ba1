"""A client polling a job every 2 s over one keep-alive connection never races the close."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

POLL_EVERY = 2.0  # gunicorn's default keep-alive, where the race was
POLL_FOR = 60.0


def test_polling_every_2_seconds_keeps_one_connection_for_a_minute(stack: Pipeline) -> None:
    job = stack.submit(
        {"positivePrompt": "a lighthouse polled by a patient client", "resolution": "1K"}
    )
    local_addresses: set[tuple[str, int]] = set()
    polls = 0
    # A plain client, without the retry transport the shipped clients use: any close is seen.
    with httpx.Client(
        base_url=stack.receiver_url,
        timeout=15,
        headers={"Authorization": f"Bearer {stack.api_key}"},
    ) as client:
        ends = time.monotonic() + POLL_FOR
        while time.monotonic() < ends:
            response = client.get(f"/v1/jobs/{job['id']}")
            assert response.status_code == 200, response.text
            assert response.json()["id"] == job["id"]
            assert response.headers.get("connection", "").lower() != "close"
            stream = response.extensions["network_stream"]
            local_addresses.add(stream.get_extra_info("client_addr"))
            polls += 1
            # The idle gap under test, not a wait for a condition: the connection stays unused
            # for exactly the old keep-alive, so the next request lands on its boundary.
            time.sleep(POLL_EVERY)
    assert polls >= POLL_FOR / (2 * POLL_EVERY), polls
    # One local port for every poll: the server kept the connection open between them all.
    assert len(local_addresses) == 1, local_addresses
