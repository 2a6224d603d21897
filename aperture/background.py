"""Work in the background of a web process, for the embedded default, which has no broker:
a few threads (greenlets under gunicorn's gevent workers) run what is handed to them, so a
request that hands work over answers at once. Production runs the same work on Celery.

Each callable runs with its own database connection, closed when it ends. Work handed over
is lost if the process stops; what hands it over must be able to find it again (async jobs
are rows: routing/jobs/dispatch.py picks up what a previous process left).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor  # one pool per process, made on first use
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=settings.JOB_IN_PROCESS_WORKERS, thread_name_prefix="background"
            )
        return _executor


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("background work %s failed", getattr(fn, "__name__", fn))
    finally:
        connections.close_all()


def submit(fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) in the background, as soon as a thread is free."""
    _pool().submit(_run, fn, args)


def later(delay_seconds: float, fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) in the background after `delay_seconds`."""
    timer = threading.Timer(delay_seconds, submit, args=(fn, *args))
    timer.daemon = True
    timer.start()
