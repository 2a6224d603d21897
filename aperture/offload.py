"""Run CPU-heavy work (image rendering and encoding) off the gevent event loop.

Under gunicorn's gevent workers a long Pillow call would stall every other request of the
worker; gevent's native thread pool runs it beside the loop (Pillow releases the GIL in its
heavy operations). Without gevent's patching the call simply runs inline.
"""

from collections.abc import Callable
from typing import TypeVar, cast

T = TypeVar("T")


def run_blocking(function: Callable[[], T]) -> T:
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
