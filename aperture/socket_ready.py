"""Whether a socket has input waiting, asked without waiting and without the event loop.

A pooled connection is checked before it is used again: input on an idle connection is an
end of stream (the server closed it) or a reply nobody read, and either way it must not
carry the next call. The Redis and HTTP clients ask with `select.poll`, which gevent patches
with a poll that gives the event loop a turn even when it may not wait: every ready greenlet
runs first (~50 µs of CPU a check, and a caller's turn given away in the middle of taking a
connection). This asks the process's own poll: one system call, no descriptor limit.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any, Protocol

from gevent import monkey


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


_poll: Callable[[], Any] = monkey.get_original("select", "poll")


def has_input(sock: _HasFileno) -> bool:
    """Whether reading `sock` now would return something (data, bytes TLS has decrypted
    already, or the end of the stream) or fail, rather than wait. A socket that cannot be
    polled (closed meanwhile) raises ValueError or OSError."""
    pending = getattr(sock, "pending", None)  # an ssl.SSLSocket's decrypted bytes
    if pending is not None and pending():
        return True
    poller = _poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
