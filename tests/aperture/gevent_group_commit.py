"""Run by tests/aperture/test_group_commit.py under gevent's monkey-patching, as gunicorn's
workers run: prints what became of each writer's row, as JSON."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 - after patching, as in a gevent worker
from collections.abc import Sequence  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from aperture.group_commit import GroupWriter  # noqa: E402

WRITERS = 50
written: list[str] = []
writes: list[int] = []
release = gevent.event.Event()  # the first write is held until the impatient one has left


def many(rows: Sequence[str]) -> None:
    writes.append(len(rows))
    gevent.sleep(0.01)  # a round trip: the others queue meanwhile
    written.extend(rows)


def one(row: str) -> None:
    writes.append(1)
    if row == "first":
        release.wait()
    written.append(row)


writer: GroupWriter[str] = GroupWriter(
    many, one, before_wait=lambda: None, row_errors=(ValueError,)
)
outcomes: dict[str, str] = {}


def write(row: str) -> None:
    try:
        writer.write(row)
        outcomes[row] = "written"
    except gevent.Timeout:
        outcomes[row] = "timed out"


def impatient(row: str) -> None:
    with gevent.Timeout(0.001):  # gone before its batch's turn
        write(row)


greenlets = [gevent.spawn(write, "first")]
gevent.sleep(0)  # "first" writes alone; the rest queue behind it
greenlets += [gevent.spawn(write, f"r{n}") for n in range(WRITERS)]
gevent.spawn(impatient, "impatient").join(timeout=10)
release.set()
gevent.joinall(greenlets, timeout=10)
gevent.spawn(write, "after").join(timeout=10)  # the writer is not stuck
print(json.dumps({"outcomes": outcomes, "written": written, "writes": writes}))
