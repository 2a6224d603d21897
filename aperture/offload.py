"""Run CPU-heavy work (image rendering and encoding) off the gevent event loop.

Under gunicorn's gevent workers a long Pillow call would stall every other request of the
worker; gevent's native thread pool runs it beside the loop (Pillow releases the GIL in its
heavy operations). Without gevent's patching the call simply runs inline.
"""

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_blocking(function: Callable[[], T]) -> T:
    try:
        from gevent import get_hub, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return function()
    if not monkey.is_module_patched("socket"):
        return function()
    return get_hub().threadpool.apply(function)  # type: ignore[no-any-return]
