"""Group commit: rows written by many requests of a process at once go to the database
together, in one round trip and one commit, and each writer still returns only once its own
row is written (or has failed), as if it had written it alone.

The first writer to find no write under way writes its row at once (alone, at low load: no
wait, no extra step). Writers that come while a write is under way join the next batch and
wait; when the write ends, the first of them to wake writes the whole batch for all of them.
So under load a batch holds whatever arrived during the previous write, and the rows' cost
(a statement, a round trip, a commit and its flush to disk each) is shared.

A batch is written in one transaction. One that fails on a row's own fault (`row_errors`: an
integrity or data error) is written again row by row, so that the row the database refuses
fails alone and its writer gets the database's error; any other failure (the database
unreachable, a pool timeout, a commit whose outcome is unknown) fails every writer of the
batch at once, never retried: a retry could write rows twice, or keep every writer waiting
one row at a time through an outage. Each waiting writer raises its own copy of that
failure, with the same cause; if the writer whose turn it was was stopped (its greenlet's
timeout), only it raises the stop, and the others raise BatchStopped, an Exception their
callers handle like any failed write.

A writer gives its database connection back before it waits (`before_wait`): holding it,
the writers waiting could take every connection of the pool from the one whose turn it is.
A writer killed while it waits for its batch's turn (a greenlet's timeout) takes its row
back out; once the batch's write has begun, its row is written with the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Row = TypeVar("Row")


class BatchStopped(Exception):
    """The write of a writer's batch was stopped midway by what stopped the writer whose turn
    it was (its greenlet's timeout, say): the row is not known to be written. An Exception,
    unlike the stop itself, which belongs to that one writer."""


@dataclass(eq=False)
class _Batch(Generic[Row]):
    rows: list[Row] = field(default_factory=list)
    turn: threading.Event = field(default_factory=threading.Event)  # its write may start
    written: threading.Event = field(default_factory=threading.Event)
    claimed: bool = False  # its write has begun: no row joins or leaves it any more
    withdrawn: set[int] = field(default_factory=set)  # positions whose writer left first
    done: set[int] = field(default_factory=set)  # positions known to be written
    failed: dict[int, BaseException] = field(default_factory=dict)  # by position
    shared: BaseException | None = None  # what failed its write as a whole, if anything


class GroupWriter(Generic[Row]):
    """`write_many(rows)` writes rows together in one transaction (or raises, having written
    none); `write_one(row)` writes one (or raises). Both run on the database connection of
    the writer whose turn it is. `row_errors` are the errors a row can cause by itself."""

    def __init__(
        self,
        write_many: Callable[[Sequence[Row]], None],
        write_one: Callable[[Row], None],
        *,
        before_wait: Callable[[], None],
        row_errors: tuple[type[Exception], ...],
    ) -> None:
        self._write_many = write_many
        self._write_one = write_one
        self._before_wait = before_wait
        self._row_errors = row_errors
        self._lock = threading.Lock()
        self._open: _Batch[Row] | None = None  # the batch rows join
        self._busy = False  # a batch is being written, or it is the open one's turn

    def write(self, row: Row) -> None:
        """Write `row` with whatever else is being written, or raise why it could not be."""
        with self._lock:
            batch = self._open
            if batch is None:
                batch = self._open = _Batch()
            position = len(batch.rows)
            batch.rows.append(row)
            if not self._busy:
                self._busy = True
                batch.turn.set()
        if not batch.turn.is_set():
            try:
                self._before_wait()
                batch.turn.wait()
            except BaseException:
                with self._lock:
                    if not batch.claimed:  # not yet being written: the row leaves with it
                        batch.withdrawn.add(position)
                raise
        with self._lock:
            leads = not batch.claimed
            batch.claimed = True
            if leads and self._open is batch:
                self._open = None  # closed: later rows start the next batch
        if leads:
            self._write(batch)
        else:
            self._before_wait()
            batch.written.wait()
        failure = batch.failed.get(position)
        if failure is None:
            return
        if leads or failure is not batch.shared:
            raise failure  # its own: raised in its own write, or its row's own error
        raise _for_waiter(failure)

    def _write(self, batch: _Batch[Row]) -> None:
        positions = [p for p in range(len(batch.rows)) if p not in batch.withdrawn]
        try:
            if len(positions) == 1:
                self._one(batch, positions[0])
            elif positions:
                self._many(batch, positions)
        except BaseException as stopped:
            # Stopped mid-write (a timeout, or a failure that is no row's): the rows not known
            # to be written fail with it.
            batch.shared = stopped
            for position in positions:
                if position not in batch.done:
                    batch.failed.setdefault(position, stopped)
            if not isinstance(stopped, Exception):
                raise
        finally:
            batch.written.set()
            with self._lock:
                following = self._open
                if following is not None:
                    following.turn.set()
                else:
                    self._busy = False

    def _many(self, batch: _Batch[Row], positions: list[int]) -> None:
        try:
            self._write_many([batch.rows[p] for p in positions])
        except self._row_errors:
            for position in positions:  # the one to blame fails alone
                self._one(batch, position)
        else:
            batch.done.update(positions)

    def _one(self, batch: _Batch[Row], position: int) -> None:
        try:
            self._write_one(batch.rows[position])
        except self._row_errors as refused:
            batch.failed[position] = refused
        else:
            batch.done.add(position)


def _for_waiter(failure: BaseException) -> Exception:
    """A waiting writer's own exception for the failure of its batch's write: a copy of it,
    with its cause (every raise adds the raiser's frames to an exception's traceback, and the
    frames keep their requests' locals alive: the writers must not pile theirs on one); or
    BatchStopped if the writer whose turn it was was stopped, for the stop was its alone."""
    if not isinstance(failure, Exception):
        stopped = BatchStopped(
            f"the write of this row's batch was stopped ({type(failure).__name__})"
        )
        stopped.__cause__ = failure
        return stopped
    # Made without its class's __init__ or __reduce__, which may expect other arguments or
    # change the original (psycopg's drops its connection).
    try:
        own = type(failure).__new__(type(failure))
    except TypeError:  # a class that cannot be made so: the one failure, shared
        return failure
    own.args = failure.args
    own.__dict__.update(failure.__dict__)
    own.__cause__, own.__context__ = failure.__cause__, failure.__context__
    own.__suppress_context__ = failure.__suppress_context__
    return own
