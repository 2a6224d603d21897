"""The database connection around network waits."""

from django.db import connection


def release_connection() -> None:
    """Give the connection back to the pool before waiting on the network (an upstream, a slow
    body): held through such waits, connections run out at a few hundred requests."""
    if not connection.in_atomic_block:
        connection.close()
