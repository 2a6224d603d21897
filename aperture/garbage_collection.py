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
"""

from __future__ import annotations

import gc

from django.conf import settings


def tune_for_serving() -> None:
    """Freeze what is loaded now and collect at APERTURE_GC_THRESHOLD; call once, when the
    application has been loaded."""
    gc.collect()  # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*settings.GC_THRESHOLD)
