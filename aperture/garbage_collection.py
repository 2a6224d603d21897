"""The garbage collector of a gunicorn worker, tuned once the application is loaded
(gunicorn.conf.py's post_worker_init).

With Python's defaults (a young collection every 700 new objects, the whole heap now and
then) a gateway worker spent 2.3-3.1 s collecting in a run of about 7,800 requests (most of it
walking the objects Django, DRF and the app loaded at start, which never become garbage).
So once they are loaded, gc.freeze() sets them aside for good, and the young generation
collects every APERTURE_GC_THRESHOLD[0] (10,000) new objects instead: 0.75-0.8 s for the
same run, and req/s at concurrency 64 went from 443-503 to 681-698 without budgets and from
366-400 to 474-546 under three (the same machine, back to back).
Cycles are still collected; a request's garbage lives a little longer.

A request that waits on its upstream outlives two young collections, so what it leaves in
cycles (a greenlet's database wrapper, an upstream connection past the pool's size, its
request and response objects) reaches the oldest generation, which Python collects only
as more is allocated: after a burst, not until the next one. Over five bursts of 5,000
requests a worker grew from 273 MB to 1,112 MB, and a full collection freed about 300,000
such objects per worker. So a worker that had APERTURE_GC_AFTER_IN_FLIGHT (100) requests in
flight at once collects everything once none is (`after_drain`): 273, 644, 690, 714, 732 MB
over four bursts (collecting at once instead, 261 MB to 787 MB over five).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

from django.conf import settings

_serving = False  # this process is a web worker, tuned (tune_for_serving)


def tune_for_serving() -> None:
    """Freeze what is loaded now and collect at APERTURE_GC_THRESHOLD; call once, when the
    application has been loaded."""
    global _serving
    gc.collect()  # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*settings.GC_THRESHOLD)
    _serving = True


# After a drained burst, the collection waits past gunicorn's keep-alive (5 s): a burst's
# idle keep-alive connections hold their greenlets, and with them the database wrappers
# those greenlets made, until then. It runs in a greenlet of its own, not in a response's.
DRAINED_DELAY_SECONDS = 6.0


def after_drain(peak: int, still_drained: Callable[[], bool]) -> bool:
    """The last request in flight has ended, after `peak` at once at most since the last
    drain: if that was a burst (in a web worker only), collect every generation once
    DRAINED_DELAY_SECONDS have passed, if `still_drained()` then. Whether it was."""
    if not (_serving and 0 < settings.GC_AFTER_IN_FLIGHT <= peak):
        return False
    timer = threading.Timer(DRAINED_DELAY_SECONDS, _collect_if, args=(still_drained,))
    timer.daemon = True
    timer.start()
    return True


def _collect_if(still_drained: Callable[[], bool]) -> None:
    if still_drained():  # else another burst is under way: its own drain collects
        gc.collect()
