"""A web process's garbage collector, tuned once the app is loaded (aperture/wsgi.py)."""

from __future__ import annotations

import gc
import weakref
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
        assert garbage_collection._serving  # and a drained burst is collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_process_drained_after_a_burst_collects_the_garbage_its_requests_left(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's objects outlive two young collections while it waits on its upstream, so
    what it leaves in cycles is in the oldest generation, which Python collects only when
    more is allocated: after a 5,000-request burst, until the next one. A gateway worker
    grew by 100-200 MB a burst (273 -> 1,112 MB over five)."""
    settings.GC_AFTER_IN_FLIGHT = 3
    monkeypatch.setattr(garbage_collection, "_serving", True)
    gate = Gate()

    def left_in_the_oldest_generation() -> weakref.ref[_Node]:
        cycle = _Node()
        cycle.other = _Node()
        cycle.other.other = cycle
        gc.collect(1)  # alive through the young collections: on to the oldest generation
        return weakref.ref(cycle)

    for _ in range(2):  # fewer than GC_AFTER_IN_FLIGHT at once: no collection of its own
        assert gate.enter(10)
    gone = left_in_the_oldest_generation()
    gate.leave()
    gate.leave()
    assert gone() is not None

    for _ in range(3):  # a burst
        assert gate.enter(10)
    gate.leave()
    gate.leave()
    assert gone() is not None  # one still in flight
    gate.leave()
    assert gone() is None  # drained: collected


def test_outside_a_serving_process_a_drained_burst_collects_nothing(settings: Any) -> None:
    settings.GC_AFTER_IN_FLIGHT = 1
    gate = Gate()
    cycle = _Node()
    cycle.other = cycle
    gc.collect(1)
    gone = weakref.ref(cycle)
    del cycle
    assert gate.enter(10)
    gate.leave()
    assert gone() is not None  # tests and Celery keep Python's own schedule
    gc.collect()
