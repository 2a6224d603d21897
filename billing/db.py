"""Transactions for the billing hot path, optionally without waiting for the WAL flush.

Every request commits a hold, a settlement and a usage record. On PostgreSQL each commit
normally waits for its WAL to reach disk while the budget rows stay locked, which caps a
hot budget at a few dozen requests per second. With APERTURE_BILLING_ASYNC_COMMIT (the
default) these transactions use `synchronous_commit = off`: still atomic and consistent,
and exact under concurrency, but a crash of the database server itself may lose the last
fraction of a second of them (PostgreSQL's wal_writer_delay, 3 x 200 ms at most).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction


@contextmanager
def billing_transaction() -> Iterator[None]:
    with transaction.atomic():
        if settings.BILLING_ASYNC_COMMIT and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield
