"""The arithmetic and request shapes of the receiver and growth benchmark phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.bench.growth import Level, bytes_per_image, p99_growth, stack_cpu_growth
from infra.bench.receiver import (
    BenchError,
    Rounds,
    WrkRequest,
    WrkRound,
    calls_per_request,
    cores_busy,
    cpu_ms_per_request,
    cpu_ratio,
    drift_ratios,
    emulator_body,
    fresh_item,
    job_sizes,
    parse_wrk,
    receiver_figures,
    webhook_request,
    write_requests,
)

pytestmark = pytest.mark.unit

TASK = "5b1c0a0e-2f4d-4c1b-9a8e-3d2f1e0c9b7a"
OTHER = "0f9e8d7c-6b5a-4948-8372-6150a4b3c2d1"
WRK_LINE = (
    'WRK {"requests": 1200, "duration_us": 4000000, "connect_errors": 0, "read_errors": 0, '
    '"write_errors": 0, "status_errors": 0, "timeouts": 1, "p50_us": 2500, "p90_us": 9000, '
    '"p99_us": 31000, "max_us": 52000, "mean_us": 3300.5}'
)


def wrk_round(name: str, rps: float, p99_ms: float) -> WrkRound:
    return WrkRound(name, round(rps * 10), 10.0, 0, 0, 1.0, 2.0, p99_ms, p99_ms, 1.0)


def test_parse_wrk_reads_the_summary_line_among_wrks_own_report() -> None:
    output = f"Running 4s test @ http://127.0.0.1:1\n  1 threads and 16 connections\n{WRK_LINE}\n"
    measured = parse_wrk("duplicate", output)
    assert measured.requests == 1200
    assert measured.rps == 300
    assert measured.p99_ms == 31
    assert measured.timeouts == 1
    assert measured.errors == 0


def test_parse_wrk_counts_socket_errors_and_non_2xx_answers_as_errors() -> None:
    line = WRK_LINE.replace('"read_errors": 0', '"read_errors": 2').replace(
        '"status_errors": 0', '"status_errors": 3'
    )
    assert parse_wrk("fresh", line).errors == 5


def test_parse_wrk_without_a_summary_says_which_round() -> None:
    with pytest.raises(BenchError, match="hello"):
        parse_wrk("hello", "unable to connect to 127.0.0.1:1 Connection refused\n")


def test_each_round_is_compared_with_the_mean_of_the_hello_rounds_around_it() -> None:
    # hello 1000, measured 300, hello 500, measured 200, hello 300
    assert drift_ratios([1000, 500, 300], [300, 200]) == [pytest.approx(0.4), 0.5]


def test_drift_ratios_need_a_hello_round_on_either_side_of_each_round() -> None:
    with pytest.raises(ValueError):
        drift_ratios([1000, 500], [300, 200])


def test_the_webhook_request_keeps_the_token_and_encodes_as_the_emulator_does() -> None:
    body = {"data": [{"taskUUID": TASK, "seed": 7}]}
    request = webhook_request(f"http://127.0.0.1:8000/webhooks/runware/{TASK}?token=a%2Bb", body)
    assert request.path == f"/webhooks/runware/{TASK}?token=a%2Bb"
    assert request.body == json.dumps(body)


def test_request_files_hold_one_tab_separated_request_per_line(tmp_path: Path) -> None:
    requests = [WrkRequest("/a?token=x", '{"k": "v\\tw"}'), WrkRequest("/b", "{}")]
    written = write_requests(tmp_path / "requests.txt", requests).read_text()
    assert written == '/a?token=x\t{"k": "v\\tw"}\n/b\t{}\n'


def test_a_request_with_a_raw_tab_or_line_break_is_refused() -> None:
    with pytest.raises(ValueError):
        WrkRequest("/a", '{"k": "v\tw"}').line()
    with pytest.raises(ValueError):
        WrkRequest("/a\n", "{}").line()


def test_emulator_body_follows_its_envelope_and_status_switches() -> None:
    item = {"taskUUID": TASK}
    assert emulator_body(item, {"envelope": "wrapped"}) == {"data": [item]}
    assert emulator_body(item, {"envelope": "flat", "webhook_status_field": True}) == {
        "taskUUID": TASK,
        "status": "success",
    }


def test_a_fresh_item_names_its_own_task_and_image_everywhere() -> None:
    template = {
        "taskType": "imageInference",
        "taskUUID": TASK,
        "imageUUID": "img-1",
        "imageURL": "http://127.0.0.1:9/image/img-1.jpg",
        "seed": 11,
        "cost": 0.07,
    }
    item = fresh_item(template, OTHER, "img-2")
    assert item == {
        **template,
        "taskUUID": OTHER,
        "imageUUID": "img-2",
        "imageURL": "http://127.0.0.1:9/image/img-2.jpg",
    }
    assert template["imageUUID"] == "img-1"


def test_redis_calls_per_request_leave_out_idle_commands_and_total_the_rest() -> None:
    before = {"evalsha": 100, "hgetall": 50, "ping": 3}
    after = {"evalsha": 400, "hgetall": 250, "ping": 3, "zcard": 100}
    assert calls_per_request(before, after, 100) == {
        "total": 6.0,
        "evalsha": 3.0,
        "hgetall": 2.0,
        "zcard": 1.0,
    }
    assert calls_per_request(before, after, 0) == {}


def test_bytes_per_image_is_the_memory_added_over_the_images_added() -> None:
    assert bytes_per_image(2_000_000, 11_000_000, 9_000) == 1000
    with pytest.raises(ValueError):
        bytes_per_image(1, 2, 0)


def test_p99_growth_is_corrected_by_the_hello_rates_around_each_round() -> None:
    low = Level("mix-low", (180, 100))
    low.hello = [
        wrk_round("hello", 1000, 5),
        wrk_round("hello", 1000, 5),
        wrk_round("hello", 1000, 5),
    ]
    low.mixes = [wrk_round("mix-low", 200, 100), wrk_round("mix-low", 200, 100)]
    # The CPU ran half as fast at the top: hello halved, the receiver's p99 doubled.
    high = Level("mix-high", (10_080, 10_000))
    high.hello = [
        wrk_round("hello", 600, 9),
        wrk_round("hello", 400, 11),
        wrk_round("hello", 600, 9),
    ]
    high.mixes = [wrk_round("mix-high", 100, 200), wrk_round("mix-high", 100, 200)]
    assert low.p99_ms == 100
    assert high.p99_ms == 200
    assert p99_growth(low, high) == pytest.approx(1.0)
    assert [r.name for r in high.rounds()] == ["hello", "mix-high", "hello", "mix-high", "hello"]


def test_images_go_in_flight_as_jobs_of_twenty_and_one_for_the_rest() -> None:
    assert job_sizes(100) == [20] * 5
    assert job_sizes(9_930) == [20] * 496 + [10]
    assert job_sizes(7) == [7]
    assert job_sizes(0) == []


def test_cpu_per_request_leaves_out_idle_processes() -> None:
    before = {"receiver": 10.0, "redis": 2.0, "beat": 1.0}
    after = {"receiver": 12.0, "redis": 2.5, "beat": 1.0, "hello": 0.0}
    assert cpu_ms_per_request(before, after, 1000) == {"receiver": 2.0, "redis": 0.5}
    assert cores_busy(before, after, 4.0) == {
        "receiver": 0.5,
        "redis": 0.12,
        "beat": 0.0,
        "hello": 0.0,
    }


def test_the_cpu_ratio_is_the_floors_cpu_per_request_over_the_receivers() -> None:
    rounds = Rounds()
    rounds.cpu_per_request = {
        "hello": [{"hello": 0.5}, {"hello": 0.7}, {"hello": 0.6}],
        "duplicate": [{"receiver": 3.0, "redis": 0.4}, {"receiver": 3.0}],
    }
    assert cpu_ratio(rounds) == 0.2
    assert cpu_ratio(Rounds()) is None


def test_stack_cpu_growth_compares_the_stacks_cpu_per_request_without_the_floor() -> None:
    low = Level("mix-low", (180, 100))
    low.cpu_ms = {"receiver": 9.0, "redis": 1.0, "hello": 5.0}
    high = Level("mix-high", (10_080, 10_000))
    high.cpu_ms = {"receiver": 9.0, "redis": 2.0, "worker-bench": 4.0}
    assert stack_cpu_growth(low, high) == 1.5
    assert stack_cpu_growth(Level("mix-low", (0, 0)), high) is None


def test_the_receiver_is_compared_with_hello_and_with_the_redis_floor_beside_it() -> None:
    rounds = Rounds(
        hello=[wrk_round("hello", rps, 3.0) for rps in (4000, 3600, 3800, 4200)],
        redis_floor=[wrk_round("redis_floor", 2000, 3.0), wrk_round("redis_floor", 2100, 3.0)],
        duplicate=[wrk_round("duplicate", 1900, 3.0), wrk_round("duplicate", 1800, 3.0)],
        fresh=[wrk_round("fresh", 100, 3.0)],
        fresh_stored=1000,
        cpu_per_request={"fresh": [{"receiver": 5.0}]},
    )
    figures = receiver_figures(rounds, 1000)
    # Each duplicate round against the hello rounds on either side of it.
    assert figures["duplicate_ratios"] == [round(1900 / 3800, 3), round(1800 / 4000, 3)]
    assert figures["redis_floor_ratio"] == round((2000 / 4000 + 2100 / 4200) / 2, 3)
    assert figures["duplicate_to_redis_floor"] == round((1900 / 2000 + 1800 / 2100) / 2, 3)
    assert [r["name"] for r in figures["rounds"]] == [
        "hello", "redis_floor", "duplicate", "hello", "fresh", "hello", "duplicate",
        "redis_floor", "hello",
    ]  # fmt: skip
