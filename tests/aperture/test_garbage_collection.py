"""A web process's garbage collector, tuned once the app is loaded (aperture/wsgi.py)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from aperture.garbage_collection import tune_for_serving


class _Node:
    other: _Node


def test_serving_freezes_what_is_loaded_and_collects_at_the_configured_thresholds(
    settings: Any,
) -> None:
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
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
