"""The Redis config examples are safe by default: private binds, no password in the file, AOF."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

REDIS = Path(__file__).resolve().parents[2] / "infra" / "redis"
DATA_NODES = ["redis.conf", "replica.conf"]


def _directives(name: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for raw in (REDIS / name).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            if key.lower() == "sentinel":
                key, _, value = f"sentinel {value}".partition(" ")[2].partition(" ")
                key = f"sentinel {key}"
            directives.setdefault(key.lower(), []).append(value.strip())
    return directives


@pytest.mark.parametrize("name", [*DATA_NODES, "sentinel.conf"])
def test_every_node_binds_loopback_and_private_addresses_only(name: str) -> None:
    directives = _directives(name)
    assert directives["protected-mode"] == ["yes"]
    (bind,) = directives["bind"]
    addresses = [ipaddress.ip_address(item.lstrip("-")) for item in bind.split()]
    assert ipaddress.ip_address("127.0.0.1") in addresses
    assert all(address.is_loopback or address.is_private for address in addresses)


@pytest.mark.parametrize("name", [*DATA_NODES, "sentinel.conf"])
def test_no_password_is_written_in_a_config_file(name: str) -> None:
    directives = _directives(name)
    for secret in ("requirepass", "masterauth", "sentinel auth-pass", "sentinel sentinel-pass"):
        assert secret not in directives, f"{name} holds {secret}: it belongs in a secret file"
    assert "--include /run/secrets/" in (REDIS / name).read_text()


@pytest.mark.parametrize("name", DATA_NODES)
def test_data_nodes_keep_every_write_and_never_evict(name: str) -> None:
    directives = _directives(name)
    assert directives["appendonly"] == ["yes"]
    assert directives["appendfsync"] == ["everysec"]
    assert directives["maxmemory-policy"] == ["noeviction"]
    assert directives["replica-read-only"] == ["yes"]
    assert int(directives["min-replicas-max-lag"][0]) <= 10


def test_a_node_of_a_sentinel_group_refuses_writes_without_a_replica() -> None:
    assert _directives("replica.conf")["min-replicas-to-write"] == ["1"]
    # A server alone has no replica to wait for: it must still take writes.
    assert _directives("redis.conf")["min-replicas-to-write"] == ["0"]


def test_sentinels_agree_by_majority_on_the_master_the_pipeline_names() -> None:
    directives = _directives("sentinel.conf")
    (monitor,) = directives["sentinel monitor"]
    name, host, port, quorum = monitor.split()
    assert name == "imagine"  # REDIS_SENTINEL_MASTER's default
    assert ipaddress.ip_address(host).is_private and int(port) == 6379
    assert int(quorum) == 2  # of the three sentinels the example runs
    assert directives["sentinel deny-scripts-reconfig"] == ["yes"]
