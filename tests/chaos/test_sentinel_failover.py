"""A master SIGKILLed mid-run behind Sentinel: 60 images, nothing lost, nothing paid twice."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from infra import servers, supervise
from infra.chaos import ChaosRun, ChaosStack, Profile, say, wait_until
from infra.supervise import Service

pytestmark = pytest.mark.chaos

REDIS_CONFIG = supervise.REPO_ROOT / "infra" / "redis"
MASTER = "imagine"


def _data_node_conf(path: Path, replica_of: int | None) -> Path:
    """infra/redis/replica.conf (the example every data node of a group runs) with the test's
    master; start_redis adds loopback, the port and the directory on the command line."""
    source = "no one" if replica_of is None else f"127.0.0.1 {replica_of}"
    path.write_text(f"include {REDIS_CONFIG / 'replica.conf'}\nreplicaof {source}\n")
    return path


class SentinelGroup:
    """A master, a replica and three sentinels on loopback, from the example configs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: dict[str, Service] = {}
        self.sentinels: list[supervise.ManagedProcess] = []
        self.sentinel_ports: list[int] = []

    def start(self) -> None:
        master = self._start_node("a", None)
        self._start_node("b", master.port)
        for index in range(3):
            self._start_sentinel(index, master.port)
        wait_until(self._ready, 60, "the sentinels to know the replica and each other")

    def _start_node(self, name: str, replica_of: int | None, port: int | None = None) -> Service:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        conf = _data_node_conf(workdir / "node.conf", replica_of)
        service = servers.start_redis(workdir, port, appendonly=True, config_file=conf)
        self.nodes[name] = service
        return service

    def _start_sentinel(self, index: int, master_port: int) -> None:
        port = supervise.free_port()
        workdir = self.workdir / f"sentinel{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "sentinel.conf"
        # sentinel.conf's settings, with loopback addresses and a 1 s down-after for the test.
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
            "sentinel deny-scripts-reconfig yes\n"
        )
        process = supervise.ManagedProcess(
            f"sentinel{index}",
            [servers.redis_executable(), str(conf), "--sentinel"],
            log_dir=workdir,
            env=supervise.child_env(None),
            cwd=workdir,
        ).start()
        supervise.wait_for_tcp("127.0.0.1", port, 20, process=process)
        self.sentinels.append(process)
        self.sentinel_ports.append(port)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def _ready(self) -> bool:
        # min-replicas-to-write 1: the master takes writes once its replica has caught up.
        with (
            contextlib.suppress(redis.ResponseError),
            contextlib.closing(redis.Redis(port=self.nodes["a"].port, socket_timeout=1)) as master,
        ):
            master.set("sentinel-test:ready", 1)
        if not redis.Redis(port=self.nodes["a"].port, socket_timeout=1).exists(
            "sentinel-test:ready"
        ):
            return False
        for port in self.sentinel_ports:
            with contextlib.closing(self._sentinel(port)) as client:
                state = client.sentinel_master(MASTER)
                replicas = client.sentinel_slaves(MASTER)
            if state["num-other-sentinels"] < 2 or not any(
                "s_down" not in str(r["flags"]) for r in replicas
            ):
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as a majority of sentinels tell it."""
        votes: dict[int, int] = {}
        for port in self.sentinel_ports:
            with (
                contextlib.suppress(redis.RedisError),
                contextlib.closing(self._sentinel(port)) as c,
            ):
                address = c.sentinel_get_master_addr_by_name(MASTER)
                if address:
                    votes[int(address[1])] = votes.get(int(address[1]), 0) + 1
        return next((port for port, count in votes.items() if count >= 2), None)

    @property
    def env(self) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": MASTER,
            # A new job and a minted taskUUID are on the replica before they are relied on.
            "REDIS_REPLICA_ACKS": "1",
            "REDIS_REPLICA_WAIT_MS": "1000",
        }

    def stop(self) -> None:
        supervise.stop_all([*self.sentinels, *self.nodes.values()], timeout=5)


class SentinelStack(ChaosStack):
    """The chaos stack (two workers, beat, receiver, emulator, S3) against the Sentinel group."""

    def __init__(self, workdir: Path, seed: int, group: SentinelGroup) -> None:
        super().__init__(workdir, seed)
        self.group = group
        master = group.nodes["a"]
        self.config = dataclasses.replace(self.config, redis_url=master.url)

    def _pipeline_env(self) -> dict[str, str]:
        env = super()._pipeline_env()
        env.pop("REDIS_URL")  # one source of truth: the sentinels
        env.update(self.group.env)
        return env


class FailoverRun(ChaosRun):
    """The chaos run with one fault: the master is SIGKILLed and Sentinel promotes the replica;
    the old master comes back as the new one's replica, as an operator would bring it back."""

    def __init__(self, profile: Profile, workdir: Path, timeout: float) -> None:
        self.group = SentinelGroup(workdir / "redis")
        self.group.start()
        super().__init__(profile, workdir, timeout)
        self.stack = SentinelStack(workdir / "stack", profile.seed, self.group)
        self.failover_s = 0.0

    def arm_faults(self) -> None:
        # The provider's usual latency only: the failover is this run's fault.
        self.emulator_call(
            "PATCH",
            "/_emulator/config",
            {"seed": self.profile.seed, "latency_min_ms": 200, "latency_max_ms": 1200},
        )

    def schedule(self) -> list[tuple[float, str, Callable[[], None]]]:
        return [(0.4, "master failover", self.fail_over)]

    def fail_over(self) -> None:
        before = self.totals()
        old = self.group.nodes["a"]
        assert self.group.master_port() == old.port
        started = time.monotonic()
        old.process.kill()
        say(f"SIGKILLed the master on port {old.port}")
        wait_until(lambda: self.group.master_port() not in (None, old.port), 60, "a new master")
        self.failover_s = time.monotonic() - started
        new_port = self.group.master_port()
        say(f"sentinels promoted the replica on port {new_port} in {self.failover_s:.1f}s")
        old.process.stop(timeout=5)
        self.group._start_node("a", new_port, port=old.port)
        new_master = redis.Redis(port=new_port, socket_timeout=2)
        wait_until(
            lambda: int(new_master.info("replication")["connected_slaves"]) >= 1,
            60,
            "the old master to follow the new one",
        )
        new_master.close()
        say(f"the old master follows the new one ({time.monotonic() - started:.1f}s in all)")
        self.expect_consuming(before, "the failover")


@pytest.mark.timeout(300)
def test_a_master_failover_mid_run_loses_nothing_and_charges_once(tmp_path: Path) -> None:
    profile = Profile(
        images=60,
        seed=11,
        exact_faults=False,
        kills=[],
        restart_receiver=False,
        restart_redis=False,
        submit_seconds=20.0,
    )
    run = FailoverRun(profile, tmp_path, timeout=200)
    try:
        counts = run.run()
    finally:
        run.close()
        run.group.stop()
    say(f"failover in {run.failover_s:.1f}s; {counts}")
    assert counts.requested == 60
    assert counts.lost == 0, counts
    assert counts.duplicates == 0, counts
    assert counts.charged_twice == 0, counts
    assert counts.stored == counts.charged == 60, counts
    # A worker rides the failover out (pipeline.broker): none exits and needs its supervisor.
    assert not run.stack.crashes, run.stack.crashes
    assert not counts.problems, counts.problems
    assert 0 < run.failover_s < 30
