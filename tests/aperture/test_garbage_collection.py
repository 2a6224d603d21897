"""A web process's garbage collector, tuned once the app is loaded (aperture/wsgi.py)."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from aperture import garbage_collection
from aperture.garbage_collection import tune_for_serving
from aperture.load_shedding import Gate


class _Node:
    other: _Node


def test_serving_freezes_what_is_loaded_and_collects_at_the_configured_thresholds(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(garbage_collection, "_serving", False)  # as it was, afterwards
    settings.GC_THRESHOLD = (12_345, 11, 12)
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        tune_for_serving()
        assert gc.get_threshold() == (12_345, 11, 12)
        assert gc.get_freeze_count() > 10_000  # Django, DRF and the app, out of the GC's way
        cycle = _Node()
        cycle.other = _Node()
        cycle.other.other = cycle
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None  # cycles made while serving are still collected
        assert garbage_collection._serving  # a drained burst's garbage is collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _left_in_the_oldest_generation() -> weakref.ref[_Node]:
    """A cycle that lived through the young collections, then became garbage."""
    cycle = _Node()
    cycle.other = _Node()
    cycle.other.other = cycle
    gc.collect(1)  # alive through the young collections: on to the oldest generation
    return weakref.ref(cycle)


def test_a_process_drained_after_a_burst_collects_the_garbage_its_requests_left(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's objects outlive two young collections while it waits on its upstream, so
    what it leaves in cycles is in the oldest generation, which Python collects only when
    more is allocated: after a 5,000-request burst, until the next one. A gateway worker
    grew by 100-200 MB a burst (273 -> 1,112 MB over five)."""
    settings.GC_AFTER_IN_FLIGHT = 3
    monkeypatch.setattr(garbage_collection, "_serving", True)
    monkeypatch.setattr(garbage_collection, "DRAINED_DELAY_SECONDS", 0.0)
    drains: list[tuple[int, bool]] = []
    after_drain = garbage_collection.after_drain

    def recorded(peak: int, still_drained: Callable[[], bool]) -> bool:
        drains.append((peak, after_drain(peak, still_drained)))
        return drains[-1][1]

    monkeypatch.setattr(garbage_collection, "after_drain", recorded)
    gate = Gate()
    for _ in range(2):  # fewer than GC_AFTER_IN_FLIGHT at once: no collection
        assert gate.enter(10)
    gate.leave()
    gate.leave()
    for _ in range(3):  # a burst
        assert gate.enter(10)
    gone = _left_in_the_oldest_generation()
    gate.leave()
    gate.leave()
    gate.leave()  # drained
    for _ in range(500):  # the collection runs apart, once the delay has passed
        if gone() is None:
            break
        time.sleep(0.01)
    assert gone() is None
    assert gate.enter(10)  # one request alone after it: the peak started over
    gate.leave()
    assert drains == [(2, False), (3, True), (1, False)]


def test_no_collection_outside_a_serving_process_or_when_turned_off(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(garbage_collection, "_serving", False)  # tests and Celery
    settings.GC_AFTER_IN_FLIGHT = 1
    assert not garbage_collection.after_drain(10_000, lambda: True)
    monkeypatch.setattr(garbage_collection, "_serving", True)
    settings.GC_AFTER_IN_FLIGHT = 0  # APERTURE_GC_AFTER_IN_FLIGHT=0: never
    assert not garbage_collection.after_drain(10_000, lambda: True)


def test_a_collection_due_while_another_burst_is_under_way_waits_for_its_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collections.append(generation))
    garbage_collection._collect_if(lambda: False)
    assert collections == []
    garbage_collection._collect_if(lambda: True)
    assert collections == [2]
