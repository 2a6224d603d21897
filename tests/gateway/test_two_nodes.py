"""Two gateway nodes behave as one: two gunicorn masters on their own ports, one PostgreSQL,
one Redis (and, for async jobs, one Celery worker and one beat). Budgets, revocations,
configuration changes and rate limits made or counted on one node hold on the other."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings
from django.db import connection

from billing import services as services_billing
from billing.models import Budget, BudgetLease, UsageRecord
from routing.models import ImageJob, ModelAlias
from tenants import services
from tenants.models import Team
from tenants.services import CreatedKey
from tests.billing.conftest import PRICE_MICRO, budget, priced_alias  # noqa: F401 - fixture
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream
from tests.routing.test_jobs_live import celery_beat, celery_worker
from tests.support import ROOT, Server, gunicorn, subprocess_database_url, wait_for

BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024"}
NEXT_SECRET = "sk-fake-next-upstream-9876543210"
SWEPT = re.compile(r"Task routing\.tasks\.sweep_image_jobs\[[^\]]+\] succeeded")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """What every process of the deployment shares: the database, Redis (inherited
    REDIS_URL), a broker queue of this test's own, and storage."""
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("the nodes need PostgreSQL and Redis")
    queue = f"test-nodes-{uuid.uuid4().hex}"
    yield {
        "DATABASE_URL": subprocess_database_url(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "APERTURE_MEDIA_ROOT": str(tmp_path / "media"),
    }
    # Messages no worker will take (spend alerts the nodes queued) and kombu's bindings.
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        left = list(client.scan_iter(match=f"*{queue}*", count=1000))
        if left:
            client.delete(*left)
    finally:
        client.close()


@pytest.fixture
def nodes(live_env: dict[str, str], transactional_db: None) -> Iterator[tuple[Server, Server]]:
    """Node A and node B: separate gunicorn masters, each with its own worker process."""
    with gunicorn(live_env, workers=1) as a, gunicorn(live_env, workers=1) as b:
        yield a, b


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _generate(node: str, secret: str) -> requests.Response:
    return requests.post(
        f"{node}/v1/images/generations", json=BODY, headers=_bearer(secret), timeout=60
    )


def _models(node: str, secret: str) -> requests.Response:
    return requests.get(f"{node}/v1/models", headers=_bearer(secret), timeout=10)


def _split(nodes: tuple[Server, Server], secret: str, count: int) -> list[requests.Response]:
    """`count` concurrent generations, every other one through node B; none may fail."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        answers = list(pool.map(lambda i: _generate(nodes[i % 2], secret), range(count)))
    failed = [f"{a.status_code} {a.text[:300]}" for a in answers if a.status_code >= 500]
    assert not failed, "\n".join([*failed, *(node.log_tail() for node in nodes)])
    return answers


def _second_call_in_flight(
    pool: ThreadPoolExecutor, node: str, secret: str, fake: FakeUpstream
) -> Future[requests.Response]:
    """A generation through `node`, once its upstream call (the second the fake has seen) is
    under way."""
    in_flight = pool.submit(_generate, node, secret)
    wait_for(lambda: len(fake.requests) == 2, timeout=10, what="a call in flight")
    return in_flight


def _wait_for_records(count: int) -> None:
    wait_for(lambda: UsageRecord.objects.count() >= count, timeout=15, what="usage records")


def test_a_budget_is_exact_across_both_nodes_under_a_split_race(
    nodes: tuple[Server, Server],
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    allowed, concurrent = 20, 60
    row = budget(workspace=api_key.key.workspace, period="month", limit_images=allowed)
    fake_upstream.delay = 0.2  # every hold is still in flight while the others arrive
    for node in nodes:  # both warm: neither node wins the race by starting first
        assert _models(node, api_key.secret).status_code == 200

    answers = _split(nodes, api_key.secret, concurrent)

    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {200: allowed, 402: concurrent - allowed}
    refused = [a.json()["error"] for a in answers if a.status_code == 402]
    assert {(e["type"], e["code"]) for e in refused} == {
        ("insufficient_quota", "insufficient_quota")
    }
    assert len(fake_upstream.requests) == allowed
    row = Budget.objects.get(pk=row.pk)
    served = UsageRecord.objects.filter(status=200)
    assert (row.used_images, row.reserved_images, row.reserved_micro) == (allowed, 0, 0)
    _wait_for_records(concurrent)  # each is written once its response has gone out
    assert served.count() == allowed
    assert sum(served.values_list("images", flat=True)) == allowed
    assert row.used_micro == sum(served.values_list("cost_micro", flat=True))
    assert row.used_micro == allowed * PRICE_MICRO
    assert UsageRecord.objects.filter(status=402, cost_micro=0).count() == concurrent - allowed


def test_a_budget_leased_in_slices_by_both_nodes_is_exact_under_a_split_race(
    nodes: tuple[Server, Server],
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    """Roomy enough that each node admits from slices of it (billing/leases.py) until its
    last part, admitted per request: exactly what it allows is served, the rest refused."""
    allowed, concurrent = 128, 300
    row = budget(workspace=api_key.key.workspace, period="month", limit_images=allowed)
    fake_upstream.delay = 0.1
    for node in nodes:
        assert _models(node, api_key.secret).status_code == 200

    answers = _split(nodes, api_key.secret, concurrent)

    statuses = Counter(answer.status_code for answer in answers)
    logs = "\n".join(
        line
        for node in nodes
        for line in node.log.read_text(errors="replace").splitlines()
        if " INFO " not in line
    )
    assert statuses == {200: allowed, 402: concurrent - allowed}, f"{statuses}\n{logs}"
    assert len(fake_upstream.requests) == allowed
    _wait_for_records(concurrent)
    served = UsageRecord.objects.filter(status=200)
    assert sum(served.values_list("images", flat=True)) == allowed
    row = Budget.objects.get(pk=row.pk)
    assert (row.used_images, row.used_micro) == (allowed, allowed * PRICE_MICRO)
    # Each node's keeper gives back its idle slices (the budget's row, then the lease's).
    wait_for(
        lambda: (
            not Budget.objects.filter(pk=row.pk, reserved_images__gt=0).exists()
            and not BudgetLease.objects.exists()
        ),
        timeout=15,
        what="both nodes to give back their slices",
    )


def test_three_nested_money_budgets_leased_in_slices_by_both_nodes_stay_exact(
    live_env: dict[str, str],
    transactional_db: None,
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    """A 1,000-way race split over two nodes, each admitting from its own slices of the
    workspace, team and key budgets of one key: the tightest (the key's) admits exactly what
    it allows, and each is charged exactly what was served."""
    allowed, concurrent = 250, 1000
    key = api_key.key
    rows = [
        budget(workspace=key.workspace, period="month", limit_micro=10_000 * PRICE_MICRO),
        budget(
            workspace=key.workspace, team=key.team, period="month", limit_micro=500 * PRICE_MICRO
        ),
        budget(workspace=key.workspace, key=key, period="month", limit_micro=allowed * PRICE_MICRO),
    ]
    # Slices are kept however idle, and a refusal waits long enough for the other node to
    # give its slices back on a starved machine: the race's outcome depends on no timing.
    env = {
        **live_env,
        "APERTURE_BUDGET_LEASE_IDLE_SECONDS": "600",
        "APERTURE_BUDGET_RECLAIM_WAIT_SECONDS": "10",
    }
    fake_upstream.delay = 0.1
    with gunicorn(env, workers=1) as a, gunicorn(env, workers=1) as b:
        for node in (a, b):  # each node's first request leases a slice of every budget
            assert _generate(node, api_key.secret).status_code == 200
        held = set(BudgetLease.objects.values_list("budget_id", "holder"))
        assert len(held) == 6, held  # three budgets, two nodes

        answers = _split((a, b), api_key.secret, concurrent - 2)

        statuses = Counter(answer.status_code for answer in answers)
        assert statuses == {200: allowed - 2, 402: concurrent - allowed}
    # Both nodes stopped gracefully: their slices and charges are on the budgets' rows.
    assert not BudgetLease.objects.exists()
    assert len(fake_upstream.requests) == allowed
    _wait_for_records(concurrent)
    served = UsageRecord.objects.filter(status=200)
    assert sum(served.values_list("cost_micro", flat=True)) == allowed * PRICE_MICRO
    for row in Budget.objects.filter(pk__in=[r.pk for r in rows]):
        assert (row.used_micro, row.reserved_micro) == (allowed * PRICE_MICRO, 0), row.scope


def test_an_operator_lowering_a_limit_mid_slice_of_node_a_lets_neither_node_pass_it(
    live_env: dict[str, str],
    transactional_db: None,
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    """Node A's slice has room for three more requests, one of them in flight, when the limit
    is lowered to three requests in all: node A gives back the rest of its slice when asked
    (it would keep an idle one for minutes), and the two nodes together serve one more."""
    env = {**live_env, "APERTURE_BUDGET_LEASE_IDLE_SECONDS": "600"}
    row = budget(workspace=api_key.key.workspace, period="month", limit_micro=64 * PRICE_MICRO)
    with gunicorn(env, workers=1) as a, gunicorn(env, workers=1) as b:
        assert _generate(a, api_key.secret).status_code == 200
        assert BudgetLease.objects.get().amount_micro == 3 * PRICE_MICRO  # one of its four spent
        fake_upstream.delay = 2
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = _second_call_in_flight(pool, a, api_key.secret, fake_upstream)

            services_billing.budget_change_limits(
                actor=ACTOR, budget=row, fields={"limit_micro": 3 * PRICE_MICRO}
            )

            # Node A retired its slice before the change: only the call in flight still holds.
            assert not BudgetLease.objects.filter(retired=False).exists()
            assert in_flight.result().status_code == 200
        fake_upstream.delay = 0.1
        answers = _split((a, b), api_key.secret, 12)
        assert Counter(answer.status_code for answer in answers) == {200: 1, 402: 11}
    assert len(fake_upstream.requests) == 3
    _wait_for_records(14)
    row = Budget.objects.get(pk=row.pk)
    assert (row.used_micro, row.reserved_micro) == (3 * PRICE_MICRO, 0)


def test_a_slice_of_a_node_killed_mid_flight_returns_when_its_lease_expires(
    live_env: dict[str, str],
    transactional_db: None,
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    allowed = 64  # node A's first slice: 4 images
    row = budget(workspace=api_key.key.workspace, period="month", limit_images=allowed)
    short = {**live_env, "APERTURE_BUDGET_LEASE_SECONDS": "3"}
    with gunicorn(short, workers=1) as a:
        assert _generate(a, api_key.secret).status_code == 200
        lease = BudgetLease.objects.get()
        assert lease.images == 3  # one of its 4 spent
        _wait_for_records(1)
        fake_upstream.delay = 5  # the next request is in flight, held in the slice, when A dies
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = _second_call_in_flight(pool, a, api_key.secret, fake_upstream)
            os.killpg(a.pid, signal.SIGKILL)  # no goodbye: the slice stays leased
            with pytest.raises(requests.ConnectionError):  # its caller got nothing: no charge
                in_flight.result()
        fake_upstream.delay = 0
    with gunicorn(short, workers=1) as b:
        served, deadline = 0, time.monotonic() + 60
        while served < allowed - 1 and time.monotonic() < deadline:
            answer = _generate(b, api_key.secret)
            assert answer.status_code in (200, 402), answer.text
            served += answer.status_code == 200
            if answer.status_code == 402:  # what node A held is not back yet
                time.sleep(0.2)
        assert served == allowed - 1
        assert _generate(b, api_key.secret).status_code == 402
    assert not BudgetLease.objects.filter(pk=lease.pk).exists()
    row = Budget.objects.get(pk=row.pk)
    assert row.used_images == allowed
    assert UsageRecord.objects.filter(status=200).count() == allowed


def test_a_node_stopped_gracefully_gives_its_slices_back(
    live_env: dict[str, str],
    transactional_db: None,
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    row = budget(workspace=api_key.key.workspace, period="month", limit_images=64)
    with gunicorn(live_env, workers=1) as node:
        assert _generate(node, api_key.secret).status_code == 200
        assert BudgetLease.objects.exists()
    # SIGTERM, and the master waited for its worker: the slice came back on the way out.
    assert not BudgetLease.objects.exists()
    row = Budget.objects.get(pk=row.pk)
    assert (row.used_images, row.reserved_images) == (1, 0)


def test_a_key_revoked_through_node_a_is_refused_by_node_b_on_its_next_request(
    nodes: tuple[Server, Server],
    api_key: CreatedKey,
    admin_key: CreatedKey,
) -> None:
    a, b = nodes
    assert _models(b, api_key.secret).status_code == 200  # node B has looked the key up
    assert _models(a, api_key.secret).status_code == 200

    revoked = requests.post(
        f"{a}/api/v1/keys/{api_key.key.public_id}/revoke",
        headers=_bearer(admin_key.secret),
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"

    refused = _models(b, api_key.secret)
    assert refused.status_code == 401
    assert refused.json() == {
        "error": {
            "message": "This API key has been revoked.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert _models(a, api_key.secret).status_code == 401


APPLIED = """\
credentials:
  - name: openai-next
    provider: openai
    base_url: {url}
    secret_env: TWO_NODES_NEXT_UPSTREAM_KEY
aliases:
  - name: priced
    deployments:
      - credential: openai-next
        model: priced-model
"""


def test_an_alias_changed_by_apply_on_node_a_routes_on_node_b_within_a_second(
    nodes: tuple[Server, Server],
    live_env: dict[str, str],
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    a, b = nodes
    secret = api_key.secret
    with FakeUpstream(expected_secret=NEXT_SECRET) as next_upstream:
        # Both nodes have resolved `priced` to the first upstream, and keep it in memory.
        for node in (b, a, b):
            assert _generate(node, secret).status_code == 200
        assert (len(fake_upstream.requests), len(next_upstream.requests)) == (3, 0)

        config = tmp_path / "gateway.yaml"
        config.write_text(APPLIED.format(url=next_upstream.url))
        applied = subprocess.run(
            [sys.executable, "manage.py", "apply", str(config)],
            cwd=ROOT,
            env={**os.environ, **live_env, "TWO_NODES_NEXT_UPSTREAM_KEY": NEXT_SECRET},
            capture_output=True,
            text=True,
            check=False,
        )
        applied_at = time.monotonic()
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.splitlines() == [
            "create credential openai-next (platform)",
            "create deployment priced → openai-next:priced-model",
            "delete deployment priced → openai-main:priced-model",
            "3 change(s); changed.",
        ]

        def b_routes_to_the_new_deployment() -> bool:
            assert _generate(b, secret).status_code == 200
            return len(next_upstream.requests) == 1

        wait_for(b_routes_to_the_new_deployment, timeout=1.0, what="node B to route anew")
        elapsed = time.monotonic() - applied_at
        assert elapsed <= 1.0, f"node B routed anew {elapsed:.3f} s after apply exited"
        before = len(fake_upstream.requests)
        for node in (a, b, a, b):
            assert _generate(node, secret).status_code == 200
    assert len(next_upstream.requests) == 5
    assert len(fake_upstream.requests) == before  # nothing reaches the old deployment again


def test_a_keys_rate_limit_is_counted_once_across_both_nodes(
    nodes: tuple[Server, Server],
    team: Team,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    limited = services.key_create(actor=ACTOR, team=team, name="limited", rpm_limit=10)

    answers = _split(nodes, limited.secret, 12)  # six through each node

    assert Counter(a.status_code for a in answers) == {200: 10, 429: 2}
    served = [a for a in answers if a.status_code == 200]
    # One window: each admission, on either node, left one fewer.
    assert sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in served) == list(
        range(10)
    )
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_upstream.requests) == 10


def test_a_job_submitted_through_node_a_runs_on_the_worker_and_is_polled_through_node_b(
    live_env: dict[str, str],
    nodes: tuple[Server, Server],
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    a, b = nodes
    secret = api_key.secret
    log = tmp_path / "celery.log"
    beat_env = {**live_env, "APERTURE_JOB_SWEEP_SECONDS": "1"}
    with celery_worker(live_env, log), celery_beat(beat_env, log, tmp_path / "beat"):
        submitted = requests.post(
            f"{a}/v1/images/generations",
            json=BODY,
            headers={**_bearer(secret), "Prefer": "respond-async"},
            timeout=30,
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        def polled() -> dict[str, Any]:
            answer = requests.get(
                f"{b}/v1/images/jobs/{job_id}", headers=_bearer(secret), timeout=10
            )
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        wait_for(lambda: polled()["status"] not in ("queued", "running"), 60, "the job to end")
        ended = polled()
        assert ended["status"] == "succeeded", (ended, log.read_text()[-3000:])
        # The beat's schedule reaches the worker through the same broker.
        wait_for(
            lambda: SWEPT.search(log.read_text()) is not None,
            30,
            "a sweep sent by the beat to run on the worker",
        )
    synchronous = _generate(b, secret).json()
    assert {k: v for k, v in ended["result"].items() if k != "created"} == {
        k: v for k, v in synchronous.items() if k != "created"
    }
    assert len(fake_upstream.requests) == 2
    job = ImageJob.objects.get(public_id=job_id)
    record = UsageRecord.objects.get(request_id=job.request_id)
    assert (record.status, record.images, record.cost_micro) == (200, 1, PRICE_MICRO)
