"""Budget slices: a process leases a share of a budget's room and admits requests from it
with no query (docs/budget-slices.md says why and what it costs).

A slice is taken like a request's hold, by the conditional UPDATE that admits a request
(billing/budgets.py), and written down as a BudgetLease row: it counts in the budget's
`reserved_*`, so `used + reserved <= limit` holds exactly as before, on every node. Requests
admitted from the slice hold their worst case in it, in this process's memory. Settling a
request moves its cost from the slice to the budget's `used_*` in one statement (the
budget's row is locked for that statement only), or, while the process's other requests are
in flight, writes it as a BudgetCharge row that the process's next such statement moves
(a hot budget's row is written every FLUSH_SECONDS, not per request); the unused part of
its hold goes back to the slice.

A slice is at most 1/BUDGET_LEASE_SHARE of the room left, and is only taken while that
covers BUDGET_LEASE_MIN_REQUESTS requests like the one at hand: the last part of a budget
is admitted one request at a time, on the exact path. A slice that can no longer be used
(spent, its period over, its budget reclaimed, or idle) is retired: shrunk at once to what
its requests in flight hold, and deleted when they end. A request that a budget would
refuse while slices of it are out asks their holders to retire them (`reclaim`) and waits
up to BUDGET_RECLAIM_WAIT_SECONDS before it is refused. Each process renews its leases
while it lives (a keeper thread); the slice of a process that died returns when its lease
expires (`reap_expired`, also run by a request that waits for it).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    OperationalError,
    connection,
    transaction,
)
from django.utils import timezone
from psycopg.types.numeric import Int8

from aperture import safe_cache
from aperture.db import prepared_cursor, release_connection
from aperture.group_commit import GroupWriter
from billing import alerts
from billing import lease_statements as statements

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.25
# Served processes keep their leases with a keeper thread. The test suite turns it off
# (tests/conftest.py): its tests run in transactions another thread cannot see, and call
# `tick()` themselves.
KEEPER_ENABLED = True

Limits = tuple[int | None, int | None]  # the budget's limit_micro and limit_images


@dataclass
class Slice:
    """One leased slice as this process sees it; `amount_*` mirrors the lease row."""

    lease_id: int
    budget_id: int
    period_start: datetime
    limits: Limits
    amount_micro: int
    amount_images: int
    held_micro: int = 0  # held by the requests in flight admitted from it
    held_images: int = 0
    inflight: int = 0
    retired: bool = False
    retired_at: float = 0.0
    used_at: float = field(default_factory=time.monotonic)
    renewed_at: float = field(default_factory=time.monotonic)

    def covers(self, micro: int, images: int) -> bool:
        return (
            self.held_micro + micro <= self.amount_micro
            and self.held_images + images <= self.amount_images
        )

    def usable(self, period_start: datetime, limits: Limits, now: float) -> bool:
        """Admits more: not retired, of this period and these limits, and surely still leased
        (renewed within two thirds of its lease, whatever the keeper's luck)."""
        fresh = now - self.renewed_at < settings.BUDGET_LEASE_SECONDS * 2 / 3
        return (
            not self.retired
            and fresh
            and self.period_start == period_start
            and self.limits == limits
        )


@dataclass(frozen=True)
class Taken:
    """What one request holds in one slice."""

    lease_id: int
    micro: int
    images: int


_lock = threading.Lock()
_current: dict[int, Slice] = {}  # budget id -> the slice requests are admitted from
_slices: dict[int, Slice] = {}  # lease id -> every slice of this process, retired ones too
_acquiring: dict[int, threading.Lock] = {}
SMALL_SECONDS = 0.5  # how long a budget with too little room for a slice is not asked again
_too_small: dict[int, float] = {}  # budget id -> until when
_holder = ""
_keeper: threading.Thread | None = None


def holder() -> str:
    """This process's name on its leases."""
    global _holder
    if not _holder:
        _holder = f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"
    return _holder


def forget() -> None:
    """Drop what this process knows of its slices (a forked child; a test's rollback). A new
    lock: a forked child must not inherit one its parent's keeper held."""
    global _holder, _keeper, _lock, _flushing, _flushed_at, _waiting
    _lock = threading.Lock()
    _flushing, _flushed_at, _waiting = 0, 0.0, False
    _current.clear()
    _slices.clear()
    _acquiring.clear()
    _too_small.clear()
    _polled.clear()
    _holder = ""
    _keeper = None


os.register_at_fork(after_in_child=forget)


def _reclaim_key(budget_id: int) -> str:
    return f"budget-reclaim:{budget_id}"


# --- Admitting -----------------------------------------------------------------------------


def take(
    budget_id: int, period_start: datetime, limits: Limits, micro: int, images: int
) -> Taken | None:
    """Hold a request's worst case in this process's slice of the budget, if it covers it."""
    now = time.monotonic()
    with _lock:
        piece = _current.get(budget_id)
        if piece is None or not piece.usable(period_start, limits, now):
            return None
        if not piece.covers(micro, images):
            return None
        piece.held_micro += micro
        piece.held_images += images
        piece.inflight += 1
        piece.used_at = now
        return Taken(piece.lease_id, micro, images)


def give_back(taken: Sequence[Taken]) -> None:
    """Undo `take` (another budget refused the request)."""
    with _lock:
        for hold in taken:
            piece = _slices.get(hold.lease_id)
            if piece is not None:
                piece.held_micro -= hold.micro
                piece.held_images -= hold.images
                piece.inflight -= 1


def acquire(
    budget_id: int,
    period_start: datetime,
    limits: Limits,
    micro: int,
    images: int,
    *,
    grant: Callable[[int, int], bool],
) -> Taken | None:
    """Lease a new slice of the budget and hold the request in it; None where the budget is
    to be admitted per request (too little room left, or its slices are being reclaimed).
    `grant(micro, images)` adds that to the budget's reserved amounts if it has the room."""
    with _lock:
        if _too_small.get(budget_id, 0.0) > time.monotonic():
            return None
        gate = _acquiring.setdefault(budget_id, threading.Lock())
    if not gate.acquire(blocking=False):
        release_connection()  # no connection held while another request leases the slice
        if not gate.acquire(timeout=1.0):
            return None
    try:
        taken = take(budget_id, period_start, limits, micro, images)  # another did it meanwhile
        if taken is not None:
            return taken
        with _lock:
            stale = _current.pop(budget_id, None)
        if stale is not None:
            try:
                _retire(stale)
            except DatabaseError:  # the keeper tries again; this request goes on the row
                logger.exception("could not retire the budget slice %s", stale.lease_id)
                return None
        if safe_cache.get(_reclaim_key(budget_id)) is not None:
            return None
        size = _slice_size(budget_id, period_start, limits, micro, images)
        if size is None:  # admitted on its row meanwhile, with no query to ask again
            with _lock:
                _too_small[budget_id] = time.monotonic() + SMALL_SECONDS
            return None
        piece = _lease(budget_id, period_start, limits, size, grant)
        if piece is None:
            return None
        with _lock:
            _current[budget_id] = piece
            _slices[piece.lease_id] = piece
        _start_keeper()
        return take(budget_id, period_start, limits, micro, images)
    finally:
        gate.release()


def _slice_size(
    budget_id: int, period_start: datetime, limits: Limits, micro: int, images: int
) -> tuple[int, int] | None:
    """As many requests like this one as 1/SHARE of the room left on every limited amount
    covers; None if that is fewer than MIN_REQUESTS, or the limits changed meanwhile."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT limit_micro, limit_images, used_micro + reserved_micro, "
            "used_images + reserved_images, period_start FROM billing_budget WHERE id = %s",
            [budget_id],
        )
        row = cursor.fetchone()
    if row is None or (row[0], row[1]) != limits:
        return None
    current = _aware(row[4]) == period_start
    share, least = settings.BUDGET_LEASE_SHARE, settings.BUDGET_LEASE_MIN_REQUESTS
    wants = (max(micro, 1), max(images, 1))
    covered = []  # how many requests like this one each limited amount's slice covers
    for limit, taken_so_far, want in ((row[0], row[2], wants[0]), (row[1], row[3], wants[1])):
        if limit is not None:
            covered.append((limit - (taken_so_far if current else 0)) // share // want)
    requests = min(covered)
    if requests < least:
        return None
    # Each amount as many requests' worth: one with no limit is held too, so that requests
    # in flight count in `reserved_*` should a limit be set on it later.
    size = [requests * want for want in wants]
    return size[0], size[1]


def _lease(
    budget_id: int,
    period_start: datetime,
    limits: Limits,
    size: tuple[int, int],
    grant: Callable[[int, int], bool],
) -> Slice | None:
    # One moment for both clocks, before the grant (which may wait on the budget's row): the
    # slice is never thought fresher than its lease.
    asked = time.monotonic()
    expires = timezone.now() + timedelta(seconds=settings.BUDGET_LEASE_SECONDS)
    with transaction.atomic():
        if not grant(*size):
            return None  # the room shrank meanwhile
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO billing_budgetlease (budget_id, holder, period_start, amount_micro, "
                "images, expires_at, retired, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "RETURNING id",
                [
                    budget_id,
                    holder(),
                    _db(period_start),
                    size[0],
                    size[1],
                    _db(expires),
                    False,
                    _db(timezone.now()),
                ],
            )
            lease_id = cursor.fetchone()[0]
    return Slice(
        lease_id, budget_id, period_start, limits, size[0], size[1], used_at=asked, renewed_at=asked
    )


# --- Settling ------------------------------------------------------------------------------


@dataclass
class Move:
    """What one settled request does to its slice and to the budget."""

    lease_id: int
    budget_id: int
    freed_micro: int  # off the slice and the budget's reserved amounts
    freed_images: int
    cost_micro: int  # onto the budget's used amounts
    cost_images: int
    active: bool = True  # its slice still admitted when it was claimed

    def values(self) -> tuple[int, ...]:
        """The columns of a billing_budgetcharge row, in order, as PostgreSQL parameters."""
        return _int8(
            self.lease_id,
            self.budget_id,
            self.freed_micro,
            self.freed_images,
            self.cost_micro,
            self.cost_images,
        )


def _int8(*values: int) -> tuple[int, ...]:
    """Server-side parameters typed bigint whatever their size. psycopg sends a plain int as
    the smallest type that holds it, and a statement's parameter types are part of the key
    it prepares statements under: with amounts and ids of every size, the flush was parsed
    and planned anew on nearly every run (0.5 ms of PostgreSQL's time each)."""
    return tuple(Int8(value) for value in values)


@dataclass
class Claim:
    """A request's charge, taken in its slices' memory before any query."""

    moves: list[Move]
    pieces: list[Slice]
    micro: int
    images: int


def claim(taken: Sequence[Taken], micro: int, images: int) -> Claim:
    """Take a request's charge in its slices, in one step under the lock (no other request
    can take the same free room meanwhile): the charge capped, on each limited amount, at the
    request's hold plus what its slice has free (nothing free in a retired slice); each
    request's hold freed. `apply` then writes it."""
    with _lock:
        found = [(hold, _slices.get(hold.lease_id)) for hold in taken]
        for hold, piece in found:
            if piece is None:
                continue  # forgotten: charged on the budget's row, within its room
            spare = not piece.retired
            if piece.limits[0] is not None:
                free = piece.amount_micro - piece.held_micro if spare else 0
                micro = min(micro, hold.micro + max(free, 0))
            if piece.limits[1] is not None:
                free = piece.amount_images - piece.held_images if spare else 0
                images = min(images, hold.images + max(free, 0))
        moves, pieces = [], []
        for hold, piece in found:
            if piece is None:
                continue
            pieces.append(piece)
            piece.held_micro -= hold.micro
            piece.held_images -= hold.images
            if piece.retired:  # it holds only what its requests hold: this one's goes
                freed = hold.micro, hold.images
            else:  # the charge, out of the slice (where no limit capped it, what is there)
                freed = (
                    min(micro, max(piece.amount_micro - piece.held_micro, 0)),
                    min(images, max(piece.amount_images - piece.held_images, 0)),
                )
            piece.amount_micro -= freed[0]
            piece.amount_images -= freed[1]
            moves.append(
                Move(
                    hold.lease_id,
                    piece.budget_id,
                    freed[0],
                    freed[1],
                    micro,
                    images,
                    active=not piece.retired,
                )
            )
    return Claim(moves, pieces, micro, images)


@dataclass
class Written:
    """What writing charges did: the leases it found (one missing was gone: its holder
    stalled past the lease), and the budgets it charged, as they then stood (for alerts)."""

    found: set[int] = field(default_factory=set)
    spends: list[alerts.Spend] = field(default_factory=list)


def apply(charge: Claim, micro: int, images: int) -> Written:
    """Write a claimed charge, lowered to `micro` and `images` if budgets held on rows took
    less. A lease missing from the answer's `found` was gone: its budget is to be charged
    without it, within its room."""
    try:
        with _lock:
            for move in charge.moves:
                if move.active:  # what the lower charge leaves goes back to the slice
                    kept = min(move.freed_micro, micro), min(move.freed_images, images)
                    piece = _slices.get(move.lease_id)
                    if piece is not None:
                        piece.amount_micro += move.freed_micro - kept[0]
                        piece.amount_images += move.freed_images - kept[1]
                    move.freed_micro, move.freed_images = kept
                move.cost_micro, move.cost_images = micro, images
        return _write(charge) if charge.moves else Written()
    finally:
        with _lock:  # in flight until written: a slice is returned only once all are
            for piece in charge.pieces:
                piece.inflight -= 1


# Under load, how often a process moves its charges to the budgets: fewer flushes, less
# CPU (docs/budget-slices.md); `used_*` lags a busy budget by a keeper round at most.
FLUSH_SECONDS = 0.1
_flushing = 0  # this process's flushes under way
_flushed_at = 0.0
_waiting = False  # this process may have charges waiting in billing_budgetcharge


def _write(charge: Claim) -> Written:
    """Move the charge to the budgets with every charge of this process still waiting, in
    one statement (`flush`); or, while other requests of its slices are in flight and this
    process flushed less than FLUSH_SECONDS ago or is flushing, write it down as charge rows
    the next flush moves: a hot budget's row is then written by each process about every
    FLUSH_SECONDS, not by every request. Either way the charge is in the database when this
    returns, and the budget's `used + reserved` counts it: a charge row is still in its
    lease's amount."""
    global _waiting
    # Only a charge within what it frees waits: moving it later can never raise a budget's
    # used + reserved, so no flush of the process can fail on it.
    within = all(
        m.cost_micro <= m.freed_micro and m.cost_images <= m.freed_images for m in charge.moves
    )
    if connection.vendor == "postgresql" and not connection.in_atomic_block and within:
        with _lock:
            alone = all(piece.inflight <= 1 for piece in charge.pieces)
            recent = time.monotonic() - _flushed_at < FLUSH_SECONDS
            later = _flushing > 0 or (recent and not alone)
        if later:
            try:
                CHARGES.write(charge.moves)
            except IntegrityError:  # a lease is gone (deferred foreign key): say which
                pass
            else:
                with _lock:
                    _waiting = True
                return Written(found={m.lease_id for m in charge.moves})
    try:
        return flush(charge.moves)
    except IntegrityError:  # beyond a limit set since it was held: on the rows, within room
        logger.warning("a charge through budget slices passed a limit; charged within room")
        return Written()


def _insert_charges(moves: Sequence[Move]) -> None:
    """One statement of the same shape whatever the number of rows (so it is prepared once),
    its columns as six arrays."""
    columns = [list(column) for column in zip(*(m.values() for m in moves), strict=True)]
    with prepared_cursor() as cursor:
        cursor.execute(statements.CHARGE, columns)


def _insert_charges_together(charges: Sequence[Sequence[Move]]) -> None:
    _insert_charges([move for moves in charges for move in moves])


# The charge rows of requests settling at the same moment go in one statement and one commit
# (aperture/group_commit.py); a request whose lease is gone gets its IntegrityError alone.
CHARGES: GroupWriter[Sequence[Move]] = GroupWriter(
    _insert_charges_together,
    _insert_charges,
    before_wait=release_connection,
    row_errors=(IntegrityError, DataError),
)


def flush(moves: Sequence[Move] = (), *, retire: bool = False) -> Written:
    """Apply the moves (marking their leases retired if `retire`) and every charge of this
    process waiting in billing_budgetcharge."""
    global _flushing, _flushed_at, _waiting
    if connection.vendor != "postgresql":  # SQLite: no data-modifying WITH; nothing waits
        return _flush_apart(moves, retire)
    with _lock:
        _flushing += 1
        _flushed_at = time.monotonic()
        waited, _waiting = _waiting, False
        ours = list(_slices) if waited else []
    try:
        if not moves and not ours:
            return Written()
        rows = _run_flush(moves, retire, ours)
    except BaseException:
        with _lock:
            _waiting = _waiting or waited
        raise
    finally:
        with _lock:
            _flushing -= 1
    written = Written(found={row[0] for row in rows})
    charged = {row[2]: row for row in rows if row[2] is not None}  # one per budget
    written.spends = [alerts.Spend.from_row(row[1], row[2:]) for row in charged.values()]
    return written


def _run_flush(moves: Sequence[Move], retire: bool, ours: list[int]) -> list[Any]:
    params: list[Any] = [value for m in moves for value in (*m.values(), retire)]
    rows = ", ".join(["(" + ", ".join(["%s::bigint"] * 6) + ", %s::boolean)"] * len(moves))
    sql = statements.FLUSH_PG.format(moves=f"VALUES {rows}" if moves else statements.NO_MOVES)
    waiting = list(_int8(*ours))
    for attempt in range(3):
        try:
            with prepared_cursor() as cursor:
                cursor.execute(sql, [*params, waiting, waiting])  # pending, then waiting
                return list(cursor.fetchall())
        except OperationalError as error:  # one statement: a deadlock undid all of it
            if attempt == 2 or connection.in_atomic_block or not _retryable(error, ("40P01",)):
                raise
    return []  # pragma: no cover - the loop returns or raises


def _retryable(error: Exception, states: tuple[str, ...] = ("40P01", "23503")) -> bool:
    """A deadlock, or a foreign key a concurrent charge row broke: worth one more try."""
    return getattr(error.__cause__, "sqlstate", None) in states


def _flush_apart(moves: Sequence[Move], retire: bool) -> Written:
    """The moves as `statements.FLUSH_PG` makes them, without data-modifying WITH (SQLite)."""
    written = Written()
    for m in moves:
        params = {
            "lease": m.lease_id,
            "freed_micro": m.freed_micro,
            "freed_images": m.freed_images,
            "cost_micro": m.cost_micro,
            "cost_images": m.cost_images,
            "retire": retire,
        }
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statements.MOVE_LEASE, params)
            lease = cursor.fetchone()
            if lease is None:
                continue
            written.found.add(m.lease_id)
            cursor.execute(
                statements.MOVE_BUDGET, {**params, "budget": lease[0], "start": lease[1]}
            )
            row = cursor.fetchone()
            if row is not None:
                written.spends.append(alerts.Spend.from_row(_aware(lease[1]), row))
    return written


# --- Retiring, returning, renewing ---------------------------------------------------------


def _retire(piece: Slice) -> None:
    """Admit nothing more from this slice, and give back at once what its requests in
    flight do not hold."""
    with _lock:
        if not piece.retired:
            piece.retired, piece.retired_at = True, time.monotonic()
        _not_current(piece)
        spare_micro = max(piece.amount_micro - piece.held_micro, 0)
        spare_images = max(piece.amount_images - piece.held_images, 0)
        piece.amount_micro -= spare_micro
        piece.amount_images -= spare_images
    spare = Move(piece.lease_id, piece.budget_id, spare_micro, spare_images, 0, 0)
    alerts.fire_reached(flush([spare], retire=True).spends)  # waiting charges moved with it


def _not_current(piece: Slice) -> None:
    """No request is admitted from this slice any more (under the lock)."""
    if _current.get(piece.budget_id) is piece:
        del _current[piece.budget_id]


def return_lease(piece: Slice) -> None:
    """Give back a retired slice whose requests have all ended, and forget it."""
    _return_rows("id = %s", [piece.lease_id])
    with _lock:
        _slices.pop(piece.lease_id, None)
        _not_current(piece)


def _return_rows(which: str, params: list[Any]) -> int:
    """Delete the leases matching `which` and give back to their budgets what they held;
    how many there were."""
    if connection.vendor == "postgresql":
        for attempt in range(3):
            try:
                with connection.cursor() as cursor:
                    cursor.execute(statements.RETURN_PG.format(which=which), params)
                    return int(cursor.fetchone()[0])
            # One statement: a deadlock undid all of it; so did a charge a stalled holder
            # wrote after its snapshot (the deferred foreign key), which the next one sees.
            except (OperationalError, IntegrityError) as error:
                if attempt == 2 or connection.in_atomic_block or not _retryable(error):
                    raise
    with transaction.atomic(), connection.cursor() as cursor:  # SQLite: one writer at a time
        cursor.execute(
            f"DELETE FROM billing_budgetlease WHERE {which} "  # noqa: S608 - constant clauses
            "RETURNING budget_id, period_start, amount_micro, images",
            params,
        )
        rows = cursor.fetchall()
        for budget_id, start, micro, images in rows:
            cursor.execute(
                "UPDATE billing_budget SET reserved_micro = reserved_micro - %s, "
                "reserved_images = reserved_images - %s WHERE id = %s AND period_start = %s",
                [micro, images, budget_id, start],
            )
    return len(rows)


def reap_expired(budget_id: int | None = None) -> int:
    """Return the slices of processes that stopped renewing them; how many."""
    which, params = "expires_at < %s", [_db(timezone.now())]
    if budget_id is not None:
        which, params = which + " AND budget_id = %s", [*params, budget_id]
    return _return_rows(which, params)


def reclaim(budget_id: int) -> bool:
    """A request this budget would refuse: retire our slices of it, return expired ones and,
    if other processes still hold slices of it, ask them to retire theirs (for a few seconds
    no new slice of it is leased anywhere). True if such slices are out, so that waiting may
    free room."""
    with _lock:
        ours = [p for p in _slices.values() if p.budget_id == budget_id and not p.retired]
    for piece in ours:
        _retire(piece)
    reap_expired(budget_id)
    out = _out(budget_id)
    if out:
        flag_seconds = max(int(settings.BUDGET_RECLAIM_WAIT_SECONDS * 3), 5)
        safe_cache.set(_reclaim_key(budget_id), 1, flag_seconds)
    return out


def reclaim_and_wait(budget_id: int) -> None:
    """Reclaim the budget's slices and wait until no other process holds one unretired:
    before its limits change. Never inside a transaction: the other processes give their
    slices back through the budget's row."""
    if reclaim(budget_id):
        wait_until_returned(budget_id)


def wait_until_returned(budget_id: int) -> None:
    """Wait, up to BUDGET_RECLAIM_WAIT_SECONDS, until no process holds an unretired slice of
    the budget: without a database connection, and with one query per budget and process
    every POLL_SECONDS however many requests wait (a refused burst must not drain the pool)."""
    deadline = time.monotonic() + settings.BUDGET_RECLAIM_WAIT_SECONDS
    while time.monotonic() < deadline:
        release_connection()
        time.sleep(POLL_SECONDS)
        if not _out_now(budget_id):
            return


POLL_SECONDS = 0.05
_polled: dict[int, tuple[float, bool]] = {}  # budget id -> when last asked, and the answer


def _out_now(budget_id: int) -> bool:
    """`_out`, asked at most once per POLL_SECONDS by this process for a budget."""
    now = time.monotonic()
    with _lock:
        last = _polled.get(budget_id)
        if last is not None and now - last[0] < POLL_SECONDS:
            return last[1]
        _polled[budget_id] = (now, last[1] if last is not None else True)  # others wait on it
    out = _out(budget_id)
    with _lock:
        _polled[budget_id] = (time.monotonic(), out)
    return out


def _out(budget_id: int) -> bool:
    """Whether a slice of this budget may still hold room no request holds: one not retired
    yet (a retired one holds only what its requests in flight hold, like their holds)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM billing_budgetlease WHERE budget_id = %s AND NOT retired "
            "AND expires_at >= %s LIMIT 1",
            [budget_id, _db(timezone.now())],
        )
        return cursor.fetchone() is not None


def tick() -> None:
    """The keeper's round: retire what is reclaimed or idle, return retired slices whose
    requests have ended, renew the rest."""
    now = time.monotonic()
    with _lock:
        pieces = list(_slices.values())
    if not pieces:
        return
    if _waiting:  # charges written during the last flush: onto the budgets, alerts fired
        try:
            alerts.fire_reached(flush().spends)
        except Exception:  # still renewed below; the charges wait for the next flush
            logger.exception("could not move the waiting budget charges")
    flags = safe_cache.get_many([_reclaim_key(p.budget_id) for p in pieces if not p.retired])
    for piece in pieces:
        try:
            idle = piece.inflight == 0 and now - piece.used_at > settings.BUDGET_LEASE_IDLE_SECONDS
            if not piece.retired and (idle or _reclaim_key(piece.budget_id) in flags):
                _retire(piece)
            if piece.retired and piece.inflight == 0:
                return_lease(piece)
        except Exception:  # one budget's trouble (a lock wait, a blip) is not every tenant's
            logger.exception("could not retire or return the budget slice %s", piece.lease_id)
    _renew(now)


def _renew(now: float) -> None:
    # A retired slice whose requests outlived RESERVATION_TTL_SECONDS (never settled: a bug,
    # a lost greenlet) is no longer renewed, so its hold is reaped like a row's would be.
    abandoned = now - settings.RESERVATION_TTL_SECONDS
    with _lock:
        due = [
            p
            for p in _slices.values()
            if now - p.renewed_at > settings.BUDGET_LEASE_SECONDS / 3
            and not (p.retired and p.retired_at < abandoned)
        ]
    if not due:
        return
    expires = timezone.now() + timedelta(seconds=settings.BUDGET_LEASE_SECONDS)
    ids = [p.lease_id for p in due]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_budgetlease SET expires_at = %s "  # noqa: S608 - placeholders only
            f"WHERE id IN ({', '.join(['%s'] * len(ids))}) RETURNING id",
            [_db(expires), *ids],
        )
        kept = {row[0] for row in cursor.fetchall()}
    with _lock:
        for piece in due:
            if piece.lease_id in kept:
                piece.renewed_at = now
            else:  # reaped: its room went back; never admit from it again
                piece.retired = True
                piece.amount_micro = piece.amount_images = 0
                _slices.pop(piece.lease_id, None)
                _not_current(piece)


def return_all() -> None:
    """Retire and return every slice of this process (it is stopping)."""
    with _lock:
        pieces = list(_slices.values())
    if pieces and _waiting:
        try:
            alerts.fire_reached(flush().spends)
        except Exception:  # returning the slices moves the charges all the same
            logger.exception("could not move the waiting budget charges")
    for piece in pieces:
        try:
            _retire(piece)
            if piece.inflight == 0:
                return_lease(piece)
        except Exception:  # the others still go back; this one's lease expires
            logger.exception("could not return the budget slice %s", piece.lease_id)


def _keep() -> None:
    from django.db import connections

    while KEEPER_ENABLED:
        time.sleep(TICK_SECONDS)
        try:
            tick()
        except Exception:
            logger.exception("the budget lease keeper's round failed")
        finally:
            connections.close_all()


def _start_keeper() -> None:
    global _keeper
    if not KEEPER_ENABLED or (_keeper is not None and _keeper.is_alive()):
        return
    with _lock:
        if _keeper is not None and _keeper.is_alive():
            return
        _keeper = threading.Thread(target=_keep, name="budget-leases", daemon=True)
        _keeper.start()


def _db(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _aware(stored: Any) -> datetime:
    """A timestamp as a raw query returns it: text and naive on SQLite."""
    value = datetime.fromisoformat(stored) if isinstance(stored, str) else stored
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_fixed_timezone(0))
    return value
