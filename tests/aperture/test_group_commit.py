"""Group commit (aperture/group_commit.py): rows written at the same moment go together, each
writer returns once its own row is written, and a refused row fails alone."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
import pytest
from django.db import OperationalError

from aperture.group_commit import BatchStopped, GroupWriter, _for_waiter
from billing.leases import _retryable


class Stopped(BaseException):
    """Like a greenlet's timeout: not an Exception."""


class Unreachable(Exception):
    """No row's fault: the database is gone."""


class Database:
    """Writes rows to a list; holds the first write until `release` is set, refuses "bad"
    (a row error), is unreachable for "down", and stops (like a timeout) at `stop_on`."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.writes: list[list[str]] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self.stop_on: str | None = None
        self.stop_batch = False  # a batch's write (of several rows) is stopped
        self.given_back = 0  # connections given back by writers before they waited

        self.stopped_in = ""

    def give_back(self) -> None:
        self.given_back += 1

    def writer(self) -> GroupWriter[str]:
        return GroupWriter(
            self.many, self.one, before_wait=self.give_back, row_errors=(ValueError,)
        )

    def many(self, rows: Sequence[str]) -> None:
        self.writes.append(list(rows))
        if self.stop_batch:
            self.stopped_in = threading.current_thread().name
            raise Stopped
        if "down" in rows:
            raise Unreachable("the database is gone") from ConnectionRefusedError("refused")
        if "bad" in rows:
            raise ValueError("a row is refused: none is written")
        self.rows.extend(rows)

    def one(self, row: str) -> None:
        self.writes.append([row])
        if not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(10)
        if row == self.stop_on:
            self.stopped_in = threading.current_thread().name  # the writer whose turn it was
            raise Stopped
        if row == "bad":
            raise ValueError("refused")
        self.rows.append(row)


def _writing(writer: GroupWriter[str], row: str, outcomes: dict[str, object]) -> threading.Thread:
    def write() -> None:
        try:
            writer.write(row)
            outcomes[row] = "written"
        except BaseException as error:  # the test reads what each writer got
            outcomes[row] = error

    thread = threading.Thread(target=write, name=row)
    thread.start()
    return thread


def _frames(outcome: object) -> list[str]:
    """The names of the functions in an exception's traceback."""
    assert isinstance(outcome, BaseException)
    names, tb = [], outcome.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def _queued(writer: GroupWriter[str], count: int) -> None:
    """Wait until `count` rows wait in the open batch."""
    for _ in range(1000):
        batch = writer._open
        if batch is not None and len(batch.rows) == count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{count} rows never queued")


@pytest.fixture
def database() -> Database:
    return Database()


def _batch_after_a_held_write(
    database: Database,
    rows: Sequence[str],
    meanwhile: Callable[[dict[str, object]], None] = lambda outcomes: None,
) -> dict[str, object]:
    """ "a" written alone and held while `rows` queue (`meanwhile` looks at them then); then
    all let go: what each writer got."""
    writer = database.writer()
    outcomes: dict[str, object] = {}
    threads = [_writing(writer, "a", outcomes)]
    assert database.holding.wait(10)
    for count, row in enumerate(rows, start=1):  # one by one: they queue in this order
        threads.append(_writing(writer, row, outcomes))
        _queued(writer, count)
    meanwhile(outcomes)
    database.release.set()
    for thread in threads:
        thread.join(10)
    assert not writer._busy
    return outcomes


def test_alone_a_row_is_written_at_once_and_the_writer_returns_after_it(
    database: Database,
) -> None:
    database.holding.set()  # no write held
    writer = database.writer()
    writer.write("a")
    writer.write("b")
    assert database.writes == [["a"], ["b"]]
    assert database.rows == ["a", "b"]
    assert database.given_back == 0  # nobody waited


def test_rows_that_come_during_a_write_go_together_in_the_next(database: Database) -> None:
    def meanwhile(outcomes: dict[str, object]) -> None:
        assert outcomes == {}  # nobody returns before their row is written
        assert database.given_back == 3  # each waiter let go of its connection first

    outcomes = _batch_after_a_held_write(database, ["b", "c", "d"], meanwhile=meanwhile)
    assert outcomes == dict.fromkeys("abcd", "written")
    assert database.writes == [["a"], ["b", "c", "d"]]  # one write for the three
    assert database.rows == ["a", "b", "c", "d"]


def test_a_refused_row_fails_alone_and_the_rest_of_its_batch_is_written(
    database: Database,
) -> None:
    outcomes = _batch_after_a_held_write(database, ["b", "bad", "c"])
    assert isinstance(outcomes.pop("bad"), ValueError)
    assert outcomes == dict.fromkeys("abc", "written")
    assert sorted(database.rows) == ["a", "b", "c"]  # each once: the failed batch wrote none


def test_a_write_stopped_midway_fails_its_rows_and_the_next_batch_is_still_written(
    database: Database,
) -> None:
    database.stop_on = "a"
    outcomes = _batch_after_a_held_write(database, ["b", "c"])
    assert isinstance(outcomes.pop("a"), Stopped)
    assert outcomes == dict.fromkeys("bc", "written")  # and the writer is free again
    assert sorted(database.rows) == ["b", "c"]


def test_a_failure_that_is_no_rows_fails_the_whole_batch_at_once(database: Database) -> None:
    outcomes = _batch_after_a_held_write(database, ["b", "down", "c"])
    assert outcomes.pop("a") == "written"
    assert all(isinstance(outcome, Unreachable) for outcome in outcomes.values())
    assert len(outcomes) == 3
    # Each raises its own, with the same cause; only the writer whose turn it was has the
    # write's frames in its traceback: raised by every writer, one exception would pile all
    # their frames (and their requests' locals) on itself.
    failures = [o for o in outcomes.values() if isinstance(o, Unreachable)]
    assert len({id(failure) for failure in failures}) == 3
    assert len({id(failure.__cause__) for failure in failures}) == 1
    assert all(isinstance(failure.__cause__, ConnectionRefusedError) for failure in failures)
    writing = [o for o in outcomes.values() if "many" in _frames(o)]
    assert len(writing) == 1
    assert len(database.writes) == 2  # no row-by-row retry through an outage
    assert database.rows == ["a"]


def test_rows_written_before_a_stop_midway_are_not_reported_failed(database: Database) -> None:
    database.stop_on = "c"  # the row-by-row retry of a refused batch is stopped at "c"
    outcomes = _batch_after_a_held_write(database, ["b", "bad", "c", "d"])
    assert sorted(database.rows) == ["a", "b"]
    for row, outcome in outcomes.items():
        if row == database.stopped_in:  # the writer stopped raises, its row written or not
            assert isinstance(outcome, Stopped)
        elif row in database.rows:
            assert outcome == "written", row
        elif row == "bad":
            assert isinstance(outcome, ValueError)
        else:  # c, d: not known to be written, and their writers were not stopped themselves
            assert isinstance(outcome, BatchStopped), row
            assert isinstance(outcome.__cause__, Stopped)


def test_a_stop_of_the_writer_whose_turn_it_is_stops_no_other(database: Database) -> None:
    """Only the writer stopped (its greenlet's timeout) raises the stop: the others' rows
    fail with an Exception, which their callers handle (a usage record logged as lost, a
    charge left to the reaper) and still answer, instead of their requests dying of it."""
    database.stop_batch = True
    outcomes = _batch_after_a_held_write(database, ["b", "c", "d"])
    assert outcomes.pop("a") == "written"
    assert database.rows == ["a"]
    assert isinstance(outcomes.pop(database.stopped_in), Stopped)
    assert len(outcomes) == 2
    for outcome in outcomes.values():
        assert isinstance(outcome, BatchStopped)
        assert isinstance(outcome.__cause__, Stopped)


def test_a_writer_stopped_while_it_waits_takes_its_row_back(database: Database) -> None:
    writer = database.writer()
    outcomes: dict[str, object] = {}
    first = _writing(writer, "a", outcomes)
    assert database.holding.wait(10)

    def give_back_then_stop() -> None:
        database.given_back += 1
        if database.given_back == 1:
            raise Stopped  # the first waiter is stopped as it starts waiting

    writer._before_wait = give_back_then_stop
    leaving = _writing(writer, "b", outcomes)
    leaving.join(10)
    staying = _writing(writer, "c", outcomes)
    _queued(writer, 2)
    database.release.set()
    for thread in (first, staying):
        thread.join(10)
    assert isinstance(outcomes.pop("b"), Stopped)
    assert outcomes == dict.fromkeys("ac", "written")
    assert sorted(database.rows) == ["a", "c"]  # b left before its batch was written


def test_under_gevent_writers_batch_and_one_timed_out_while_waiting_leaves_no_row() -> None:
    """As in a gunicorn gevent worker: threading's Lock and Event are gevent's."""
    script = Path(__file__).with_name("gevent_group_commit.py")
    ran = subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    outcomes, written = result["outcomes"], result["written"]
    assert outcomes.pop("impatient") == "timed out"
    assert set(outcomes.values()) == {"written"} and len(outcomes) == 52  # first, 50, after
    assert sorted(written) == sorted(outcomes)  # each once, the timed-out one not at all
    assert result["writes"] == [1, 50, 1]  # alone, the fifty together, alone


def test_a_waiters_copy_of_a_database_error_reads_as_the_original() -> None:
    """What callers read of a failed write (Django's error, the driver's cause and its
    SQLSTATE) is the same for every writer of the batch, and the original stays whole."""
    cause = psycopg.errors.DeadlockDetected("deadlock detected")
    failure = OperationalError(*cause.args)
    failure.__cause__ = cause
    own = _for_waiter(failure)
    assert type(own) is OperationalError
    assert own is not failure
    assert own.args == failure.args
    assert own.__cause__ is cause
    assert _retryable(own, ("40P01",))
    driver_own = _for_waiter(cause)
    assert isinstance(driver_own, psycopg.errors.DeadlockDetected)
    assert driver_own.sqlstate == cause.sqlstate == "40P01"
