"""The database connection around network waits."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from aperture.load_shedding import WORK


def release_connection() -> None:
    """Give the connection back to the pool before waiting on the network (an upstream, a slow
    body): held through such waits, connections run out at a few hundred requests. The
    request's work slot goes back too (aperture/load_shedding.py)."""
    WORK.step_out()
    if not connection.in_atomic_block:
        connection.close()


@contextmanager
def waiting_on_network() -> Iterator[None]:
    """Around a wait the request comes back from to work on (its body arriving, an image it
    named being fetched, a moderation call): the connection and the work slot are given back
    for the wait, and a slot is taken again after it, ahead of newcomers. (A request whose
    wait failed goes on to its error answer without one.)"""
    release_connection()
    yield
    WORK.resume()


@contextmanager
def prepared_cursor() -> Iterator[CursorWrapper]:
    """A cursor for the hot path's few fixed statements: on PostgreSQL it binds parameters on
    the server, so that psycopg prepares a statement it runs often on a connection (no
    planning, no quoting in Python); elsewhere the usual cursor."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    import psycopg

    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = psycopg.Cursor(connection.connection)
    # Wrapped as Django wraps its own: errors translated, queries logged where they are.
    wrapper = CursorDebugWrapper if connection.queries_logged else CursorWrapper
    cursor = wrapper(raw, connection)
    try:
        yield cursor
    finally:
        cursor.close()
