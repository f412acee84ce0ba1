"""The receiver's answer when Redis answers but takes no write (a Sentinel failover)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from pipeline.models import SlotResult
from tests.unit.conftest import FakeService, make_client, url

pytestmark = pytest.mark.unit


class RefusingService(FakeService):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def receive_webhook(self, task_uuid: str, body: Any) -> list[SlotResult]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (redis.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
    ],
)
def test_a_write_refused_during_a_failover_is_a_503_naming_redis(
    error: Exception, reason: str
) -> None:
    response = make_client(RefusingService(error)).post(url(), json={"data": []})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert body["code"] == "dependency_unavailable"
    assert body["errors"] == {"dependency": "redis"}
    assert body["message"].startswith("redis at 127.0.0.1:6379 takes no writes for now: ")
    assert body["message"].endswith(reason)


def test_another_redis_error_is_still_an_internal_error() -> None:
    error = redis.ResponseError("ERR Error running script (call to f_...): bad argument")
    response = make_client(RefusingService(error)).post(url(), json={"data": []})
    assert response.status_code == 500
    assert response.get_json()["code"] == "internal"
    assert "script" not in response.get_data(as_text=True)
