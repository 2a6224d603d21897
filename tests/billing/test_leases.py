"""Budget slices (billing/leases.py) in one process, without HTTP: exact at the last cents,
across a period's end, when an operator lowers the limit, and when a slice's holder dies.
Two live nodes racing for one budget: tests/gateway/test_two_nodes.py."""

import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.core.management import call_command
from django.db import IntegrityError, OperationalError, connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from aperture.errors import Conflict, InsufficientQuota
from billing import budgets, leases, services
from billing.models import Budget, BudgetCharge, BudgetLease, Reservation, SpendAlert
from tenants.key_auth import KeyPrincipal, authenticate_secret
from tenants.models import Team, Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import budget
from tests.conftest import ACTOR

PRICE = 1_000
ROOMY = 100 * PRICE  # a first slice of 1/16 of it covers 6 requests: slices are used
SLICE = 6 * PRICE  # as many whole requests as 1/16 of the room covers


def _principal(api_key: CreatedKey) -> KeyPrincipal:
    principal = authenticate_secret(api_key.secret)
    assert principal is not None
    return principal


def _reserve(principal: KeyPrincipal, request_id: str = "r", amount: int = PRICE) -> budgets.Hold:
    return budgets.reserve(
        principal=principal, request_id=request_id, amount_micro=amount, images=1
    )


def _counters(row: Budget) -> tuple[int, int]:
    row.refresh_from_db()
    return row.used_micro, row.reserved_micro


def _foreign_slice(row: Budget, amount: int, *, expires_in: float) -> BudgetLease:
    """A slice another process holds (it took it as this process would: counted as held)."""
    start = budgets.period_start(row.period, timezone.now())
    Budget.objects.filter(pk=row.pk).update(
        reserved_micro=F("reserved_micro") + amount, period_start=start
    )
    return BudgetLease.objects.create(
        budget=row,
        holder="elsewhere:1:dead",
        period_start=start,
        amount_micro=amount,
        images=0,
        expires_at=timezone.now() + timedelta(seconds=expires_in),
    )


def test_requests_are_admitted_from_a_slice_and_the_budget_shows_their_spend_at_once(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    first, second = _reserve(principal, "a"), _reserve(principal, "b")
    lease = BudgetLease.objects.get()  # one slice for both, and no hold row per request
    assert not Reservation.objects.exists()
    assert _counters(row) == (0, SLICE) and lease.amount_micro == SLICE

    assert budgets.settle(first, cost_micro=800, images=1) == (800, 1)
    lease.refresh_from_db()
    assert _counters(row) == (800, SLICE - 800) == (800, lease.amount_micro)
    assert row.used_images == 1
    budgets.release(second)
    leases.return_all()
    assert _counters(row) == (800, 0)
    assert not BudgetLease.objects.exists()


def test_the_last_cents_of_a_budget_are_admitted_and_not_one_more(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY + 500)
    principal = _principal(api_key)
    holds = []
    with pytest.raises(InsufficientQuota):
        for number in range(1_000):
            holds.append(_reserve(principal, f"r{number}"))
    assert len(holds) == 100  # all in flight at once: exactly what the limit allows
    assert BudgetLease.objects.exists() and Reservation.objects.exists()  # slices, then rows
    assert _counters(row)[1] <= ROOMY + 500
    for hold in holds:
        budgets.settle(hold, cost_micro=PRICE, images=1)
    leases.return_all()
    assert _counters(row) == (ROOMY, 0)
    assert _reserve(principal, "the last", amount=500).holds  # the last 500 µUSD too
    with pytest.raises(InsufficientQuota):
        _reserve(principal, "over", amount=1)


def test_a_charge_above_the_hold_takes_only_what_the_slice_has(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    hold = _reserve(principal)
    assert budgets.settle(hold, cost_micro=1_500, images=1) == (1_500, 1)  # the slice had it
    huge = _reserve(principal, "huge")
    assert budgets.settle(huge, cost_micro=10 * ROOMY, images=1) == (SLICE - 1_500, 1)
    leases.return_all()
    assert _counters(row) == (SLICE, 0)


def test_a_dead_nodes_slice_returns_when_its_lease_expires(
    api_key: CreatedKey, workspace: Workspace, settings: Any
) -> None:
    settings.BUDGET_RECLAIM_WAIT_SECONDS = 0.3
    row = budget(workspace=workspace, period="month", limit_micro=10 * PRICE)
    principal = _principal(api_key)
    lease = _foreign_slice(row, 9 * PRICE, expires_in=60)  # alive, as far as anyone knows
    _reserve(principal, "fits")
    with pytest.raises(InsufficientQuota):  # its holder never answers the reclaim
        _reserve(principal, "waits, then refused")
    BudgetLease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _reserve(principal, "after the lease ran out").holds
    assert not BudgetLease.objects.filter(pk=lease.pk).exists()
    assert _counters(row) == (0, 2 * PRICE)


def test_the_reaper_returns_expired_slices(api_key: CreatedKey, workspace: Workspace) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10 * PRICE)
    _foreign_slice(row, 4 * PRICE, expires_in=-1)
    _foreign_slice(row, 3 * PRICE, expires_in=-1)
    kept = _foreign_slice(row, 2 * PRICE, expires_in=60)
    assert leases.reap_expired() == 2
    assert _counters(row) == (0, 2 * PRICE)
    assert list(BudgetLease.objects.values_list("pk", flat=True)) == [kept.pk]


def test_a_slice_of_another_period_admits_nothing_and_charges_the_old_period_only(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="day", limit_micro=ROOMY)
    principal = _principal(api_key)
    with time_machine.travel(datetime(2026, 12, 1, 23, 59, tzinfo=UTC), tick=False) as clock:
        yesterdays = _reserve(principal, "late")
        clock.move_to(datetime(2026, 12, 2, 0, 1, tzinfo=UTC))
        todays = _reserve(principal, "early")
        assert BudgetLease.objects.count() == 2  # a new slice of the new day's room
        budgets.settle(yesterdays, cost_micro=PRICE, images=1)
        budgets.settle(todays, cost_micro=PRICE, images=1)
        leases.return_all()
    row.refresh_from_db()
    assert row.period_start == datetime(2026, 12, 2, tzinfo=UTC)
    assert (row.used_micro, row.reserved_micro) == (PRICE, 0)  # yesterday's call not in today
    assert not BudgetLease.objects.exists()


@pytest.mark.django_db(transaction=True)  # the change reclaims outside any transaction
def test_an_operator_lowers_the_limit_below_a_slice_and_nothing_passes_the_new_one(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    in_flight = _reserve(principal)
    assert _counters(row) == (0, SLICE)

    services.budget_change_limits(actor=ACTOR, budget=row, fields={"limit_micro": 3 * PRICE})

    assert _counters(row) == (0, PRICE)  # the slice gave back all but the request's hold
    admitted = [_reserve(principal, "b"), _reserve(principal, "c")]
    with pytest.raises(InsufficientQuota):
        _reserve(principal, "d")
    for hold in [in_flight, *admitted]:
        budgets.settle(hold, cost_micro=PRICE, images=1)
    leases.return_all()
    assert _counters(row) == (3 * PRICE, 0)


def test_the_keeper_returns_idle_slices_and_renews_busy_ones(
    api_key: CreatedKey, workspace: Workspace, settings: Any
) -> None:
    settings.BUDGET_LEASE_IDLE_SECONDS = 0
    settings.BUDGET_LEASE_SECONDS = 30
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    busy = _reserve(principal)
    lease = BudgetLease.objects.get()
    BudgetLease.objects.update(expires_at=timezone.now() + timedelta(seconds=5))
    leases._slices[lease.pk].renewed_at -= 11  # renewed a third of its lease ago
    leases.tick()
    assert BudgetLease.objects.get().expires_at > timezone.now() + timedelta(seconds=25)
    assert _counters(row)[1] == SLICE  # in use: kept whole

    budgets.settle(busy, cost_micro=PRICE, images=1)
    leases.tick()  # idle now
    assert _counters(row) == (PRICE, 0)
    assert not BudgetLease.objects.exists() and not leases._slices


def test_a_retired_slice_is_returned_only_once_its_last_request_is_charged(
    api_key: CreatedKey,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    hold = _reserve(_principal(api_key))
    assert not leases.reclaim(row.pk)  # retired: it holds only the request's hold now
    assert _counters(row) == (0, PRICE)
    moving = leases.flush

    def keeper_meanwhile(*args: Any, **kwargs: Any) -> Any:
        leases.tick()  # the keeper's round while the charge is on its way to the database
        return moving(*args, **kwargs)

    monkeypatch.setattr(leases, "flush", keeper_meanwhile)
    assert budgets.settle(hold, cost_micro=PRICE, images=1) == (PRICE, 1)
    assert "beyond its hold" not in caplog.text  # charged through its slice, not around it
    assert _counters(row) == (PRICE, 0)
    leases.tick()
    assert not BudgetLease.objects.exists()


@pytest.mark.django_db(transaction=True)  # the fallback runs outside any test transaction
def test_a_request_in_flight_on_a_reaped_slice_is_charged_within_the_room(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    hold = _reserve(principal)
    BudgetLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert leases.reap_expired() == 1  # this process stalled past its lease
    assert _counters(row) == (0, 0)
    Budget.objects.filter(pk=row.pk).update(used_micro=ROOMY - 300)  # others spent meanwhile
    assert budgets.settle(hold, cost_micro=PRICE, images=1) == (300, 1)
    assert _counters(row) == (ROOMY, 0)
    leases._slices[next(iter(leases._slices))].renewed_at -= 11
    leases.tick()  # the renewal finds it gone: never admitted from again
    assert not leases._slices


def test_a_charge_above_the_hold_claims_the_free_room_before_anyone_else_can(
    api_key: CreatedKey, workspace: Workspace, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    sliced = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    on_row = budget(workspace=workspace, team=team, period="month", limit_micro=10 * ROOMY)
    cache.set(leases._reclaim_key(on_row.pk), 1, 60)  # reclaimed: held on its row meanwhile
    principal = _principal(api_key)
    costly = _reserve(principal, "costly")
    assert any(h.lease_id for h in costly.holds) and any(not h.lease_id for h in costly.holds)
    others: list[budgets.Hold] = []
    settle_rows = budgets._settle_rows

    def others_arrive(*args: Any) -> Any:  # while the row's settle waits on the database
        with pytest.raises(InsufficientQuota):
            for number in range(200):
                others.append(_reserve(principal, f"other {number}"))
        return settle_rows(*args)

    monkeypatch.setattr(budgets, "_settle_rows", others_arrive)
    charged, _ = budgets.settle(costly, cost_micro=ROOMY, images=1)
    monkeypatch.undo()
    for hold in others:
        assert budgets.settle(hold, cost_micro=PRICE, images=1) == (PRICE, 1)
    leases.return_all()
    sliced.refresh_from_db()
    assert sliced.used_micro == charged + PRICE * len(others) <= ROOMY
    assert sliced.reserved_micro == 0


def test_a_money_limit_added_to_an_images_budget_counts_the_requests_in_flight(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_images=10_000)
    principal = _principal(api_key)
    in_flight = [_reserve(principal, "a"), _reserve(principal, "b")]
    assert all(h.lease_id for hold in in_flight for h in hold.holds)
    with pytest.raises(Conflict):  # 2,000 µUSD are held by the two requests in flight
        leases.reclaim_and_wait(row.pk)
        services.budget_change_limits(actor=ACTOR, budget=row, fields={"limit_micro": 1_500})
    services.budget_change_limits(actor=ACTOR, budget=row, fields={"limit_micro": 3 * PRICE})
    assert _reserve(principal, "c").holds
    with pytest.raises(InsufficientQuota):
        _reserve(principal, "d")


def test_a_changed_limit_reaches_the_cached_budgets_and_slices_resume(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    budgets.release(_reserve(principal))
    leases.reclaim_and_wait(row.pk)
    services.budget_change_limits(actor=ACTOR, budget=row, fields={"limit_micro": 2 * ROOMY})
    assert budgets.budgets_in_scope(principal)[0].limits == (2 * ROOMY, None)
    hold = _reserve(principal, "after")
    assert all(h.lease_id for h in hold.holds)  # a slice again, under the new limit


def test_an_error_leasing_a_later_budget_gives_back_the_earlier_slice(
    api_key: CreatedKey, workspace: Workspace, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    budget(workspace=workspace, team=team, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    budgets.release(_reserve(principal))  # both have a slice now
    taking = leases.take

    def second_fails(budget_id: int, *args: Any) -> Any:
        if budget_id != first.pk:
            raise OperationalError("the database went away")
        return taking(budget_id, *args)

    monkeypatch.setattr(leases, "take", second_fails)
    with pytest.raises(OperationalError):
        _reserve(principal, "broken")
    monkeypatch.undo()
    leases.return_all()
    assert _counters(first) == (0, 0)  # the first budget's take was given back


def _two_in_flight(
    api_key: CreatedKey, workspace: Workspace, **limits: Any
) -> tuple[Budget, budgets.Hold, budgets.Hold]:
    """A roomy budget and two requests admitted from one slice of it."""
    row = budget(workspace=workspace, period="month", **(limits or {"limit_micro": ROOMY}))
    principal = _principal(api_key)
    return row, _reserve(principal, "a"), _reserve(principal, "b")


def _charged_later(hold: budgets.Hold) -> None:
    """Settle while another request of the slice is in flight, right after a flush: the
    charge is written as a charge row, for the next flush to move."""
    leases._flushed_at = time.monotonic()
    assert budgets.settle(hold, cost_micro=800, images=1) == (800, 1)
    assert BudgetCharge.objects.count() == 1


@pytest.mark.django_db(transaction=True)  # charges wait only outside a transaction
def test_a_charge_written_while_others_are_in_flight_counts_at_once_and_moves_with_the_next(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row, first, second = _two_in_flight(api_key, workspace)

    _charged_later(first)
    # Still in the slice's amount, so in the budget's reserved: no room came free for it.
    assert _counters(row) == (0, SLICE)
    lease = BudgetLease.objects.get()
    assert lease.amount_micro == SLICE

    assert budgets.settle(second, cost_micro=300, images=1) == (300, 1)  # alone: flushes
    assert not BudgetCharge.objects.exists()
    assert _counters(row) == (1_100, SLICE - 1_100)
    row.refresh_from_db()
    assert row.used_images == 2
    leases.return_all()
    assert _counters(row) == (1_100, 0)


@pytest.mark.django_db(transaction=True)
def test_the_keeper_moves_waiting_charges_and_fires_the_alerts_they_reach(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row, first, _second = _two_in_flight(
        api_key, workspace, limit_micro=ROOMY, alert_thresholds=[50]
    )
    Budget.objects.filter(pk=row.pk).update(used_micro=ROOMY // 2 - 500)  # others spent
    _charged_later(first)
    assert not SpendAlert.objects.exists()

    leases.tick()
    assert not BudgetCharge.objects.exists()
    assert _counters(row)[0] == ROOMY // 2 + 300
    assert list(SpendAlert.objects.values_list("threshold", flat=True)) == [50]


@pytest.mark.django_db(transaction=True)
def test_charges_waiting_on_a_dead_processs_slice_are_spent_when_its_lease_is_reaped(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row, first, _second = _two_in_flight(api_key, workspace)
    _charged_later(first)
    leases.forget()  # the process is SIGKILLed with the second request in flight

    BudgetLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert leases.reap_expired() == 1
    assert _counters(row) == (800, 0)  # its charge spent, the rest of its slice back
    assert not BudgetCharge.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_charge_on_a_slice_reaped_meanwhile_goes_on_the_row_within_the_room(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row, first, _second = _two_in_flight(api_key, workspace)
    BudgetLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert leases.reap_expired() == 1  # this process stalled past its lease
    Budget.objects.filter(pk=row.pk).update(used_micro=ROOMY - 300)  # others spent meanwhile

    leases._flushed_at = time.monotonic()
    assert budgets.settle(first, cost_micro=800, images=1) == (300, 1)
    assert not BudgetCharge.objects.exists()
    assert _counters(row) == (ROOMY, 0)


def test_a_budget_too_small_for_a_slice_is_not_asked_again_for_a_while(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    budget(workspace=workspace, period="month", limit_micro=3 * 16 * PRICE)  # 3 requests a slice
    principal = _principal(api_key)
    _reserve(principal, "a")
    with CaptureQueriesContext(connection) as queries:
        _reserve(principal, "b")
    assert not BudgetLease.objects.exists()
    assert Reservation.objects.count() == 2  # both held on the row
    asked = [q["sql"] for q in queries if "SELECT limit_micro" in q["sql"]]
    assert not asked  # the first request learned the budget's room is too small


def test_apply_lowering_a_limit_mid_slice_gives_the_slice_back_before_its_transaction(
    api_key: CreatedKey, workspace: Workspace, tmp_path: Path
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    in_flight = _reserve(_principal(api_key))
    assert _counters(row) == (0, SLICE)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"budgets:\n  - workspace: {workspace.slug}\n    period: month\n    limit_usd: 0.003\n"
    )

    call_command("apply", str(path), stdout=io.StringIO())

    row.refresh_from_db()
    assert row.limit_micro == 3 * PRICE
    assert _counters(row) == (0, PRICE)  # only the request in flight still holds
    budgets.settle(in_flight, cost_micro=PRICE, images=1)
    assert _counters(row) == (PRICE, 0)


@pytest.mark.django_db(transaction=True)  # the failed flush is its own statement
def test_a_charge_above_its_hold_on_a_slice_a_new_limit_retired_is_charged_within_it(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row, first, second = _two_in_flight(api_key, workspace, limit_images=10_000)
    services.budget_change_limits(actor=ACTOR, budget=row, fields={"limit_micro": 3 * PRICE})
    assert _counters(row) == (0, 2 * PRICE)  # retired: it holds the two requests' holds

    # Three times its hold: only what the new limit leaves is charged.
    assert budgets.settle(first, cost_micro=3 * PRICE, images=1) == (PRICE, 1)
    assert sum(_counters(row)) == 3 * PRICE
    assert budgets.settle(second, cost_micro=PRICE, images=1) == (PRICE, 1)
    leases.return_all()
    assert _counters(row) == (2 * PRICE, 0)


@pytest.mark.django_db(transaction=True)
def test_the_flush_is_prepared_once_whatever_the_size_of_its_amounts() -> None:
    """psycopg prepares a statement under its text and its parameters' types; an int went
    as int2, int4 or int8 by its size, so a flush of amounts of every size was parsed and
    planned on nearly every run."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    sizes = [1, 40_000, 3_000_000_000, 5, 70_000, 2**40]
    for run, size in enumerate(sizes * 2):
        move = leases.Move(
            lease_id=10**6 + run,  # no such lease: the statement changes nothing
            budget_id=10**6,
            freed_micro=size,
            freed_images=run % 3,
            cost_micro=size // 2,
            cost_images=0,
        )
        leases._run_flush([move], False, [])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ["%WITH moves (lease_id%"],
        )
        assert cursor.fetchone()[0] == 1


@pytest.mark.django_db(transaction=True)  # charges wait only outside a transaction
def test_charges_settled_at_the_same_moment_are_written_in_one_statement(
    api_key: CreatedKey, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from aperture.db import release_connection
    from aperture.group_commit import GroupWriter

    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    principal = _principal(api_key)
    holds = {name: _reserve(principal, name) for name in "abcd"}
    held, release = threading.Event(), threading.Event()
    together: list[int] = []

    def first_held(moves: Any) -> None:
        if not held.is_set():
            held.set()
            assert release.wait(10)
        leases._insert_charges(moves)

    def many(charges: Any) -> None:
        together.append(len(charges))
        leases._insert_charges_together(charges)

    writer = GroupWriter(
        many, first_held, before_wait=release_connection, row_errors=(IntegrityError,)
    )
    monkeypatch.setattr(leases, "CHARGES", writer)
    monkeypatch.setattr(leases, "FLUSH_SECONDS", 60.0)  # just flushed: charges wait as rows
    leases._flushed_at = time.monotonic()

    def settle(name: str) -> None:
        assert budgets.settle(holds[name], cost_micro=800, images=1) == (800, 1)
        connection.close()

    threads = [threading.Thread(target=settle, args=("a",))]
    threads[0].start()
    assert held.wait(10)
    threads += [threading.Thread(target=settle, args=(name,)) for name in "bc"]
    for thread in threads[1:]:
        thread.start()
    for _ in range(1000):
        if leases.CHARGES._open is not None and len(leases.CHARGES._open.rows) == 2:
            break
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(10)
    assert together == [2]  # the two that came during the first write: one statement
    assert BudgetCharge.objects.count() == 3
    assert _counters(row) == (0, SLICE)  # still in the slice's amount

    assert budgets.settle(holds["d"], cost_micro=800, images=1) == (800, 1)  # alone: flushes
    assert not BudgetCharge.objects.exists()
    assert _counters(row) == (4 * 800, SLICE - 4 * 800)


@pytest.mark.django_db(transaction=True)
def test_charge_rows_of_any_number_go_in_one_statement_prepared_once(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    """Its columns as arrays: one shape whatever the batch, and no limit on its parameters
    (PostgreSQL takes 65,535; 4,000 requests of three budgets as VALUES would need 72,000)."""
    row = budget(workspace=workspace, period="month", limit_micro=ROOMY)
    _reserve(_principal(api_key))
    lease = BudgetLease.objects.get()
    nothing = leases.Move(lease.pk, row.pk, 0, 0, 0, 0)
    for size in (1, 2, 3, 5, 8, 13, 4_000):
        leases._insert_charges_together([[nothing] * 3] * size)
    assert BudgetCharge.objects.count() == 3 * (1 + 2 + 3 + 5 + 8 + 13 + 4_000)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ["%INSERT INTO billing_budgetcharge%"],
        )
        assert cursor.fetchone()[0] == 1
