"""Celery housekeeping: the reaper through a real worker; the daily rollup."""

import os
import signal
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from billing import budgets, rollups
from billing.models import Budget, DailyUsage, Reservation, UsageRecord
from billing.tasks import reap_reservations
from tenants.key_auth import authenticate_secret
from tenants.models import Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import budget
from tests.support import ROOT, VENV_BIN, subprocess_database_url, wait_for


@pytest.mark.django_db(transaction=True)
def test_an_orphaned_reservation_is_released_by_the_reaper_on_a_real_worker(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=100_000)
    principal = authenticate_secret(api_key.secret)
    budgets.reserve(principal=principal, request_id="crashed", amount_micro=40_000, images=1)
    budgets.reserve(principal=principal, request_id="in-flight", amount_micro=5_000, images=1)
    Reservation.objects.filter(request_id="crashed").update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    queue = f"test-{uuid.uuid4().hex}"
    env = {**os.environ, "DATABASE_URL": subprocess_database_url(), "APERTURE_DB_POOL": "false"}
    worker = subprocess.Popen(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "aperture",
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        reap_reservations.apply_async(queue=queue)
        wait_for(
            lambda: not Reservation.objects.filter(request_id="crashed").exists(),
            timeout=60,
            what="the worker to reap the orphaned reservation",
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    row.refresh_from_db()
    assert row.reserved_micro == 5_000
    assert list(Reservation.objects.values_list("request_id", flat=True)) == ["in-flight"]
    assert Budget.objects.get(pk=row.pk).used_micro == 0


def test_the_daily_rollup_aggregates_per_key_and_alias_and_is_idempotent(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    key = api_key.key
    now = timezone.now()
    common = {
        "workspace": workspace,
        "team": key.team,
        "key": key,
        "endpoint": "images.generations",
    }
    for i, (alias, status, images, cost, ms) in enumerate(
        [
            ("a", 200, 2, 20_000, 100),
            ("a", 200, 1, 10_000, 300),
            ("a", 502, 0, 0, 50),
            ("b", 200, 1, 7, 10),
        ]
    ):
        UsageRecord.objects.create(
            request_id=f"r{i}",
            created_at=now,
            alias=alias,
            status=status,
            images=images,
            cost_micro=cost,
            total_ms=ms,
            **common,
        )
    for _ in range(2):
        assert rollups.rollup_day(now.date()) == 2
    a = DailyUsage.objects.get(alias="a")
    assert (a.requests, a.images, a.errors, a.cost_micro, a.p50_ms, a.p95_ms) == (
        3,
        3,
        1,
        30_000,
        100,
        300,
    )
    b = DailyUsage.objects.get(alias="b")
    assert (b.requests, b.images, b.errors, b.cost_micro) == (1, 1, 0, 7)
