"""Run CPU-heavy work (image decoding, rendering and encoding) off the gevent event loop, a
few jobs at a time.

Under gunicorn's gevent workers a long Pillow call would stall every other request of the
worker; gevent's native thread pool runs it beside the loop (Pillow releases the GIL in its
heavy operations). Without gevent's patching the call simply runs inline.

A decoded image costs 4 bytes a pixel, so each process runs at most APERTURE_IMAGE_JOBS jobs
at once; the others wait in line (a gevent-aware semaphore once gevent has patched
`threading`). A burst of large images then takes turns instead of multiplying the worker's
memory. A job must not start another: it would wait for its own slot.
"""

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from typing import TypeVar, cast

from django.conf import settings

T = TypeVar("T")

_jobs: threading.BoundedSemaphore | None = None
_waiting = 0
_count_lock = threading.Lock()
# glibc's mallopt parameter: allocations from this size up are mapped and unmapped on their own.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def _limiter() -> threading.BoundedSemaphore:
    global _jobs
    with _count_lock:
        if _jobs is None:
            _return_large_blocks_to_the_os()
            _jobs = threading.BoundedSemaphore(max(1, settings.IMAGE_JOBS))
        return _jobs


def _return_large_blocks_to_the_os() -> None:
    """Pillow keeps pixels in blocks of up to 16 MB. glibc serves a block that size from the
    pool threads' arenas once one has been freed (its mmap threshold grows on its own) and
    keeps it there after the image is gone: a burst left hundreds of megabytes held. A fixed
    threshold maps every large block and unmaps it when freed. Not glibc: nothing to do."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # pragma: no cover - another C library
        pass


def waiting_jobs() -> int:
    """Jobs of this process waiting for a turn."""
    return _waiting


def _queued(change: int) -> None:
    global _waiting
    with _count_lock:
        _waiting += change


def run_blocking(function: Callable[[], T]) -> T:
    """`function()`, once a turn is free, in gevent's thread pool where there is one."""
    limiter = _limiter()
    _queued(+1)
    try:
        limiter.acquire()
    finally:
        _queued(-1)
    try:
        return _run(function)
    finally:
        limiter.release()


def _run(function: Callable[[], T]) -> T:
    try:
        from gevent import get_hub, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return function()
    if not monkey.is_module_patched("socket"):
        return function()

    def captured() -> tuple[bool, T | BaseException]:
        # Returned, not raised: gevent's pool prints a traceback for anything raised in it,
        # and a caller's undecodable upload is not an operator's stack trace.
        try:
            return True, function()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
            return False, exc

    outcome: tuple[bool, T | BaseException] = get_hub().threadpool.apply(captured)
    succeeded, value = outcome
    if not succeeded:
        assert isinstance(value, BaseException)
        raise value
    return cast(T, value)
