"""provider.replication.bulkload: the replay bracket both backends use, on a fake timer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from provider.replication.bulkload import BulkLoad


class FakeTimer:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def timer() -> Iterator[FakeTimer]:
    yield FakeTimer()
    gc.enable()
    gc.unfreeze()  # what a test froze goes back under the collector


def state(load: BulkLoad) -> tuple[bool, bool, float | None]:
    """Whether the collector runs, whether a load is under way, the last load's seconds."""
    return gc.isenabled(), load.loading, load.seconds


def test_a_new_instance_counts_as_loading_until_its_first_load_ends(timer: FakeTimer) -> None:
    load = BulkLoad(structlog.get_logger("test"), timer=timer)
    assert load.loading and load.seconds is None


def test_a_load_pauses_the_collector_and_freezes_what_it_loaded(timer: FakeTimer) -> None:
    load = BulkLoad(structlog.get_logger("test"), timer=timer)
    load.begin()
    assert state(load) == (False, True, None)
    timer.now += 2.5
    assert load.elapsed() == 2.5
    assert load.finish() == 2.5
    assert state(load) == (True, False, 2.5)
    assert gc.get_freeze_count() > 0


def test_an_abandoned_load_collects_again_and_keeps_no_time(timer: FakeTimer) -> None:
    load = BulkLoad(structlog.get_logger("test"), timer=timer)
    load.begin()
    load.abandon()
    assert state(load) == (True, False, None)


def test_progress_is_logged_at_most_once_a_second_with_rate_and_eta(timer: FakeTimer) -> None:
    load = BulkLoad(structlog.get_logger("test"), timer=timer)
    load.begin()
    with capture_logs() as logs:
        timer.now += 0.5
        load.progress(500, 9_500)  # under a second in: nothing yet
        timer.now += 0.5
        load.progress(1_000, 9_000)
        timer.now += 0.5
        load.progress(1_500, 8_500)  # half a second after the last line
        timer.now += 1.0
        load.progress(2_500, 0)
    load.abandon()
    assert logs == [
        {
            "event": "replay progress",
            "log_level": "info",
            "merged": 1_000,
            "keys_per_sec": 1_000,
            "eta_secs": 9.0,
        },
        {
            "event": "replay progress",
            "log_level": "info",
            "merged": 2_500,
            "keys_per_sec": 1_000,
            "eta_secs": 0.0,
        },
    ]


def test_progress_without_any_key_merged_has_no_eta(timer: FakeTimer) -> None:
    load = BulkLoad(structlog.get_logger("test"), timer=timer)
    load.begin()
    with capture_logs() as logs:
        timer.now += 1.0
        load.progress(0, 100)
    load.abandon()
    assert [entry["eta_secs"] for entry in logs] == [None]
