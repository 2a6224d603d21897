"""Dashboard figures: the operators' landing page over a million usage records.

`python -m bench.dashboard [N] [--gateway URL]` (run by `python -m bench --only dashboard`,
on the bench database) writes N usage records (default 1,000,000) over the last 30 days in 8
workspaces, 40 keys, 6 aliases and 12 deployments on 4 providers, with failures and fallbacks
(COPY, not the ORM); rolls them up per hour (and per day) and says how long that took; runs
the beat's warm task once (the month's day summaries into the cache); then times the dashboard
page for a signed-in operator: in-process (Django's test client) and, with --gateway, through
the running gateway; last, a page load with nothing kept in the cache. Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

LOADS = 20
SECRET = "sk-bench-dashboard"
ALIASES = ["image-prod", "image-fast", "image-hd", "flux", "sdxl", "demo-image"]
PROVIDERS = ["openai", "gemini", "bfl", "stability"]


def _percentiles(timings: list[float]) -> str:
    ordered = sorted(timings)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


def _time(call: Callable[[], object], loads: int = LOADS) -> list[float]:
    call()  # warm: templates compiled, connections open
    timings = []
    for _ in range(loads):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def _setup(actor: str) -> tuple[list, dict[str, list[tuple[int, str]]]]:
    """Workspaces, teams and keys; aliases with two deployments each (primary, fallback)."""
    from routing import services as routing_services
    from tenants import services

    suffix = uuid.uuid4().hex[:6]
    keys = []
    for w in range(8):
        workspace = services.workspace_create(
            actor=actor, slug=f"dash-{suffix}-{w}", name=f"Dashboard {w}"
        )
        teams = [
            services.team_create(actor=actor, workspace=workspace, slug=f"t{t}", name=f"T{t}")
            for t in range(2)
        ]
        keys += [
            services.key_create(actor=actor, team=teams[k % 2], name=f"app {w}-{k}").key
            for k in range(5)
        ]
    credentials = {
        provider: routing_services.credential_create(
            actor=actor,
            name=f"{provider}-{suffix}",
            provider=provider,
            base_url="http://127.0.0.1:9",
            secret=SECRET,
        )
        for provider in PROVIDERS
    }
    deployments: dict[str, list[tuple[int, str]]] = {}
    for a, name in enumerate(ALIASES):
        alias = routing_services.alias_create(actor=actor, name=f"{name}-{suffix}")
        deployments[name] = []
        for priority in range(2):
            provider = PROVIDERS[(a + priority) % len(PROVIDERS)]
            deployment = routing_services.deployment_create(
                actor=actor,
                alias=alias,
                credential=credentials[provider],
                upstream_model=f"{name}-model-{priority}",
                priority=priority,
            )
            deployments[name].append((deployment.pk, provider))
    return keys, deployments


def _seed(total: int, keys: list, deployments: dict[str, list[tuple[int, str]]]) -> None:
    from django.db import connection

    now = datetime.now(UTC)
    rng = random.Random(11)
    weights = [1 / (1 + i) for i in range(len(keys))]  # a few keys spend most
    key_aliases = {k.pk: rng.sample(ALIASES, 3) for k in keys}
    columns = (
        "request_id, created_at, workspace_id, team_id, key_id, alias, deployment_id, provider, "
        "upstream_model, endpoint, status, error_code, images, size, quality, input_tokens, "
        "output_tokens, cost_micro, total_ms, upstream_ms, bytes_in, bytes_out, method, path, "
        "attempts, guardrails, client_request_id"
    )
    picks = rng.choices(keys, weights=weights, k=total)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: COPY
        with raw.copy(f"COPY billing_usagerecord ({columns}) FROM STDIN") as copy:
            for i, key in enumerate(picks):
                alias = rng.choice(key_aliases[key.pk])
                (primary, p1), (fallback, p2) = deployments[alias]
                roll = rng.random()
                ms = int(rng.lognormvariate(8.9, 0.6))  # about 7 s, with a long tail
                attempts = [{"attempt": 1, "deployment": primary, "provider": p1, "ms": ms}]
                deployment: int | None = primary
                status, code, provider, images = 200, "", p1, 1 + i % 2
                if roll < 0.03:  # the primary failed, the fallback served
                    attempts[0]["outcome"] = "timeout"
                    attempts.append(
                        {"attempt": 2, "deployment": fallback, "provider": p2, "ms": ms}
                    )
                    attempts[1]["outcome"] = "ok"
                    deployment, provider = fallback, p2
                elif roll < 0.05:  # both failed: 502
                    attempts[0]["outcome"] = "failed"
                    attempts.append(
                        {"attempt": 2, "deployment": fallback, "provider": p2, "ms": ms}
                    )
                    attempts[1]["outcome"] = "unreachable"
                    status, code, deployment, images = 502, "upstream_error", None, 0
                elif roll < 0.07:  # refused before any call: over budget or rate
                    attempts, ms = [], rng.randrange(3, 30)
                    status, code, deployment, images = (402, "insufficient_quota", None, 0)
                else:
                    attempts[0]["outcome"] = "ok"
                copy.write_row(
                    (
                        f"req_dash_{i}",
                        now - timedelta(seconds=rng.randrange(30 * 86400)),
                        key.workspace_id,
                        key.team_id,
                        key.pk,
                        alias,
                        deployment,
                        provider,
                        "model",
                        "images.generations",
                        status,
                        code,
                        images,
                        "1024x1024",
                        "medium",
                        12,
                        1056 * images,
                        42_000 * images,
                        ms,
                        max(ms - 40, 0),
                        120,
                        1_500_000 * images,
                        "",
                        "",
                        json.dumps(attempts),
                        "[]",
                        "",
                    )
                )
        cursor.execute("ANALYZE billing_usagerecord")


def _page_through_gateway(url: str, username: str, password: str) -> Callable[[str], int]:
    """A signed-in admin session on the running gateway: GET a path, return its size."""
    import requests

    session = requests.Session()
    login = session.get(f"{url}/admin/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert token is not None
    answer = session.post(
        f"{url}/admin/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": token.group(1),
            "next": "/admin/",
        },
        headers={"Referer": f"{url}/admin/login/"},
        timeout=30,
    )
    assert 'id="dashboard"' in answer.text, answer.status_code

    def get(path: str) -> int:
        response = session.get(f"{url}{path}", timeout=60)
        assert response.status_code == 200, response.status_code
        return len(response.content)

    return get


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--gateway", help="also time the page through this running gateway")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from billing import rollups
    from billing.models import HourlyUsage, UsageRecord
    from gateway.dashboard import selectors

    cache.clear()  # the bench's own Redis database: no summaries of an earlier run
    actor = "system:bench"
    print(f"\n## Dashboard over {args.records:,} usage records (30 days)")
    keys, deployments = _setup(actor)
    started = time.perf_counter()
    _seed(args.records, keys, deployments)
    print(f"seeded {args.records:,} records (COPY) in {time.perf_counter() - started:.1f} s")

    now = datetime.now(UTC)
    started = time.perf_counter()
    rows = rollups.rollup_hours(now - timedelta(days=30), now)
    hourly = time.perf_counter() - started
    print(
        f"hourly rollup: 721 hours, {rows:,} rows, in {hourly:.1f} s "
        f"({hourly / 721 * 1000:.0f} ms an hour; the beat task does 2 hours every 5 minutes)"
    )
    started = time.perf_counter()
    two = rollups.rollup_hours(now - timedelta(hours=1), now)
    print(
        f"  the beat task's run (this hour and the last, {two:,} rows): "
        f"{(time.perf_counter() - started) * 1000:.0f} ms"
    )
    started = time.perf_counter()
    for days_ago in range(31):
        rollups.rollup_day((now - timedelta(days=days_ago)).date())
    print(f"daily rollup: 31 days in {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_hourlyusage")
    print(
        f"usage records in the database: {UsageRecord.objects.count():,}; "
        f"hourly rollup rows: {HourlyUsage.objects.count():,}"
    )

    started = time.perf_counter()
    read = selectors.warm(datetime.now(UTC))
    print(
        f"the beat's warm task, its cache empty: {read} days summed in "
        f"{(time.perf_counter() - started) * 1000:.0f} ms (then only days that changed)"
    )

    password = "a long benchmark password"
    username = f"bench-{uuid.uuid4().hex[:6]}"
    user = get_user_model().objects.create_superuser(username, "bench@localhost", password)
    client = Client()
    client.force_login(user)
    workspace_id = keys[0].workspace_id
    pages = [
        ("last 24 h, all workspaces", "/admin/?range=24h"),
        ("last 30 days, all workspaces", "/admin/?range=30d"),
        ("last 24 h, one workspace", f"/admin/?range=24h&workspace={workspace_id}"),
        ("last 30 days, one workspace", f"/admin/?range=30d&workspace={workspace_id}"),
    ]
    print(
        f"\nin-process (Django test client): the first load, then {LOADS} loads (p50, p95), "
        "then a load after the current hour is rolled up again (as every 5 minutes):"
    )
    for label, path in pages:
        reset_queries()  # the test client resets the log at each request's start
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(path)
            first = time.perf_counter() - started
        assert response.status_code == 200 and b'id="dashboard"' in response.content
        count = len(queries.captured_queries)
        sql_ms = sum(float(q["time"]) for q in queries.captured_queries) * 1000
        timings = _time(partial(client.get, path))
        reset_queries()
        with CaptureQueriesContext(connection) as warm_queries:
            client.get(path)
        warm_count = len(warm_queries.captured_queries)
        rollups.rollup_hour(datetime.now(UTC))
        started = time.perf_counter()
        client.get(path)
        moved = time.perf_counter() - started
        print(
            f"  {label:<30} first {first * 1000:.0f} ms ({count} queries, {sql_ms:.0f} ms of "
            f"SQL); then {_percentiles(timings)} ({warm_count} queries); "
            f"after a rollup {moved * 1000:.0f} ms; {len(response.content) / 1024:.0f} KB"
        )
    cache.clear()  # as after a restart of Redis, before the warm task's first run
    started = time.perf_counter()
    client.force_login(user)
    client.get("/admin/?range=30d")
    print(
        f"  last 30 days, nothing kept     {(time.perf_counter() - started) * 1000:.0f} ms "
        "(every day summed by the page itself)"
    )
    if args.gateway:
        get = _page_through_gateway(args.gateway, username, password)
        print(f"through the gateway ({args.gateway}), {LOADS} loads each:")
        for label, path in pages:
            print(f"  {label:<30} {_percentiles(_time(partial(get, path)))}")


if __name__ == "__main__":
    main()
