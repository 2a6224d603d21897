"""The race: many concurrent requests against a budget, through the real server.

Exactly the budget's worth succeed, the rest get 402, the budget's spend equals the sum of
the usage records, and the upstream is called exactly as many times as there were successes.
Run on PostgreSQL (gunicorn, 2 gevent workers) and on the embedded SQLite default.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from billing.models import Budget, Price, UsageRecord
from routing import services as routing_services
from tenants import services
from tests.billing.conftest import PRICE_MICRO
from tests.fakes.upstream import FakeUpstream
from tests.support import ROOT, gunicorn, subprocess_database_url

CONCURRENT = 200
ALLOWED = 50
BODY = json.dumps({"model": "race", "prompt": "a race", "size": "1024x1024"})


def _storm(base: str, secret: str) -> list[int]:
    def one(_: int) -> int:
        response = requests.post(
            f"{base}/v1/images/generations",
            data=BODY,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            timeout=120,
        )
        if response.status_code not in (200, 402):
            raise AssertionError(f"{response.status_code}: {response.text[:500]}")
        return response.status_code

    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


def _setup(upstream: str, budgets: list[dict]) -> tuple[str, list[int]]:
    """Key, priced alias on the fake upstream, and budgets; returns the secret and budget ids."""
    workspace = services.workspace_create(actor="t", slug="race", name="Race")
    team = services.team_create(actor="t", workspace=workspace, slug="t", name="T")
    created = services.key_create(actor="t", team=team, name="racer")
    credential = routing_services.credential_create(
        actor="t", name="up", provider="openai", base_url=upstream, secret="sk-race-upstream"
    )
    alias = routing_services.alias_create(actor="t", name="race")
    routing_services.deployment_create(
        actor="t", alias=alias, credential=credential, upstream_model="race-model"
    )
    Price.objects.update_or_create(
        provider="openai",
        model_pattern="race-model",
        size="",
        quality="",
        defaults={"per_image_micro": PRICE_MICRO},
    )
    targets: dict[str, dict[str, object]] = {
        "workspace": {},
        "team": {"team": team},
        "key": {"key": created.key},
    }
    ids = [
        Budget.objects.create(
            workspace=workspace,
            scope=b["scope"],
            **targets[b["scope"]],
            **{k: v for k, v in b.items() if k != "scope"},
        ).pk
        for b in budgets
    ]
    return created.secret, ids


def _assert_exact(statuses: list[int], fake: FakeUpstream, budget_ids: list[int]) -> None:
    assert statuses.count(200) == ALLOWED
    assert statuses.count(402) == CONCURRENT - ALLOWED
    assert len(fake.requests) == ALLOWED
    served = UsageRecord.objects.filter(status=200)
    assert served.count() == ALLOWED
    assert UsageRecord.objects.filter(status=402, cost_micro=0).count() == CONCURRENT - ALLOWED
    spent = sum(served.values_list("cost_micro", flat=True))
    tightest = Budget.objects.filter(pk__in=budget_ids).order_by("limit_micro").first()
    assert tightest is not None
    assert tightest.used_micro == spent == ALLOWED * PRICE_MICRO
    assert tightest.reserved_micro == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "budgets",
    [
        [{"scope": "key", "period": "month", "limit_micro": ALLOWED * PRICE_MICRO}],
        [  # nested: the team's budget is the tightest
            {"scope": "workspace", "period": "month", "limit_micro": 10**9},
            {"scope": "team", "period": "day", "limit_micro": ALLOWED * PRICE_MICRO},
            {"scope": "key", "period": "lifetime", "limit_micro": 2 * ALLOWED * PRICE_MICRO},
        ],
    ],
    ids=["key-budget", "nested-budgets"],
)
def test_exactly_the_budget_is_served_under_concurrency_on_postgresql(budgets: list[dict]) -> None:
    with FakeUpstream(delay=0.2) as fake:
        secret, ids = _setup(fake.url, budgets)
        env = {"DATABASE_URL": subprocess_database_url(), "APERTURE_DB_POOL_MAX_SIZE": "8"}
        with gunicorn(env, workers=2) as base:
            try:
                statuses = _storm(base, secret)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{base.log_tail()}") from None
        _assert_exact(statuses, fake, ids)


SQLITE_SETUP = """
import django, json, sys
django.setup()
from tests.billing.test_race import _setup
secret, ids = _setup(sys.argv[1], json.loads(sys.argv[2]))
print(json.dumps({"secret": secret, "ids": ids}))
"""


def test_exactly_the_budget_is_served_under_concurrency_on_the_embedded_sqlite(
    tmp_path: Path,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "APERTURE_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "aperture.settings",
    }
    budgets = [{"scope": "key", "period": "month", "limit_micro": ALLOWED * PRICE_MICRO}]
    with FakeUpstream(delay=0.2) as fake:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )
        made = subprocess.run(
            [sys.executable, "-c", SQLITE_SETUP, fake.url, json.dumps(budgets)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        setup = json.loads(made.stdout.strip().splitlines()[-1])
        overrides = {"APERTURE_VAR_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": ""}
        with gunicorn(overrides, workers=1) as base:
            statuses = _storm(base, setup["secret"])
        assert statuses.count(200) == ALLOWED
        assert statuses.count(402) == CONCURRENT - ALLOWED
        assert len(fake.requests) == ALLOWED
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup()\n"
            "from billing.models import Budget, UsageRecord\n"
            "b = Budget.objects.get()\n"
            "served = UsageRecord.objects.filter(status=200)\n"
            "spent = sum(r.cost_micro for r in served)\n"
            "print(b.used_micro, b.reserved_micro, spent, served.count())",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    used, reserved, spent, count = map(int, check.stdout.split())
    assert (used, reserved, spent, count) == (
        ALLOWED * PRICE_MICRO,
        0,
        ALLOWED * PRICE_MICRO,
        ALLOWED,
    )
