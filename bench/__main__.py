"""Gateway benchmark: `make bench` (or `python -m bench`). Prints figures; asserts nothing.

Starts the fake OpenAI upstream and the gateway (gunicorn, gevent workers, PostgreSQL and
Redis on 127.0.0.1) as their own processes, then measures on loopback:
  1. p50/p99 latency and requests/s at concurrency 1, 16 and 64 (1024x1024 image, n=1),
     against the gateway and against the fake upstream directly, in the same run;
  2. the billing path and the budget race;
  3. 1,000 concurrent requests against a 5-second upstream: successes, wall time and the
     gateway's peak memory (RSS of the gunicorn master and workers);
  4. passthrough: added latency at concurrency 1 and 64, and a 100 MB response relayed;
  5. images: peak memory under 20 concurrent 20 MB edits and 20 concurrent n=4 x 4 MB
     generations, and a stream's time to its first partial image, gateway vs direct;
  6. management: usage aggregates and the CSV export over 200,000 usage records;
  7. deployment health: an alias whose first deployment hangs vs one that is healthy;
  8. guardrails: the guard step with no policy, 10 local policies and a moderation policy;
  9. dashboard: the hourly rollup and the admin's landing page over 1,000,000 usage records;
  10. metrics: p50 at c=1 and req/s at c=64 with metrics on and off (APERTURE_METRICS=false);
  11. jobs: 1,000 async jobs submitted in one burst against a 10-s upstream and run by a
      Celery worker (gevent pool): submit p50/p99, time until all have ended, and the peak
      memory of the web and the worker;
  12. throughput: added p50/p99 at c=1 and req/s at c=16 and 64, directly, through the
      gateway with no budget and with three nested budgets; a burst of 5,000 (`--burst`)
      against a 10-s upstream under the three budgets, gateway vs direct; and req/s at c=64
      over two gateway nodes (a second gunicorn master).
`python -m bench --only passthrough` (or core, images, management, health, guardrails,
dashboard, metrics, jobs, throughput) runs one section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import requests

from bench.health import run_health
from bench.images import run_images
from bench.jobs import run_jobs
from bench.loadgen import run
from bench.management import run_management
from bench.metrics import run_metrics
from bench.passthrough import run_passthrough
from bench.seed import BENCH_MODEL, RACE_IMAGES
from bench.serve import peak_memory
from bench.throughput import run_throughput
from tests.fakes.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "aperture_bench"
# A current GPT image model at its smallest standard size, billed per image: the fake answers
# without token usage (--no-usage), so that hold and charge are one figure and the budget
# race can be exact.
BODY = json.dumps(
    {
        "model": "bench-image",
        "prompt": "a small benchmark image",
        "size": "1024x1024",
        "quality": "low",
    }
).encode()
SLOW_BODY = json.dumps({**json.loads(BODY), "model": "bench-slow"}).encode()
DIRECT_BODY = json.dumps(
    {
        "model": BENCH_MODEL,
        "prompt": "a small benchmark image",
        "size": "1024x1024",
        "quality": "low",
    }
).encode()


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _rss_mb(pid: int) -> float:
    """RSS of a process and its children, in MB."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        return 0.0
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _reset_database() -> str:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{PG}/{DB_NAME}"


def _stopped(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # Stopped with SIGTERM (a timeout, kill), the benchmark stops what it started as it does
    # on Ctrl-C: the servers, gunicorns and LiteLLM's proxy, each in a session of its own.
    signal.signal(signal.SIGTERM, _stopped)
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--slow", type=int, default=1000, help="concurrent 5-s requests")
    parser.add_argument("--race", type=int, default=1000, help="concurrent requests in the race")
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument(
        "--burst", type=int, help="concurrent 10-s requests in the throughput burst (5,000)"
    )
    parser.add_argument(
        "--usage-records", type=int, default=200_000, help="usage records for the management run"
    )
    parser.add_argument(
        "--only",
        choices=[
            "core",
            "passthrough",
            "images",
            "management",
            "health",
            "guardrails",
            "dashboard",
            "metrics",
            "jobs",
            "throughput",
        ],
        help="run one section",
    )
    args = parser.parse_args()

    upstream_port, gateway_port, slow_port = 9741, 9742, 9744
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    slow_url = f"http://127.0.0.1:{slow_port}"  # 10 s an answer, its own process
    throughput = args.only in (None, "throughput")
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    env = {
        **os.environ,
        "DATABASE_URL": _reset_database(),
        "REDIS_URL": "redis://127.0.0.1:6379/3",
        "APERTURE_VAR_DIR": str(ROOT / "var" / "bench"),
        "PORT": str(gateway_port),
        "WEB_CONCURRENCY": str(args.workers),
        "APERTURE_ACCESS_LOG": "/dev/null",
        "LOG_LEVEL": "WARNING",
        # A listening socket per worker, as web nodes get with net.ipv4.tcp_migrate_req=1
        # (docs/deployment.md): connections shared out evenly, not by the luck of the start.
        "APERTURE_REUSE_PORT": "true",
    }
    processes: list[subprocess.Popen[bytes]] = []
    stack = contextlib.ExitStack()
    try:
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fakes.upstream",
                    "--port",
                    str(upstream_port),
                    "--no-usage",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        if throughput:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.throughput", str(slow_port)],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )
        hanging = FakeUpstream(delay=10.0)
        hanging.keep_bodies = False
        stack.enter_context(hanging)
        seeded = json.loads(
            subprocess.run(
                [sys.executable, "-m", "bench.seed", upstream_url, hanging.url]
                + ([slow_url] if throughput else []),
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        key = seeded["plain"]
        gateway = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "aperture.wsgi"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        processes.append(gateway)
        _wait(f"{gateway_url}/healthz")
        _wait(f"{upstream_url}/files/none")

        print(
            f"# Aperture benchmark — {args.workers} gevent worker(s), 2 cores shared with the "
            "load generator and the fake upstream\n"
        )
        if args.only in (None, "core"):
            _core(args, gateway, gateway_url, upstream_url, seeded)
        requests.post(f"{upstream_url}/_control/delay", json={"delay": 0}, timeout=5)
        if throughput:
            _wait(f"{slow_url}/files/none")
            run_throughput(
                env=env,
                gateway_url=gateway_url,
                upstream_url=upstream_url,
                slow_url=slow_url,
                keys={"plain": seeded["plain"], "budgeted": seeded["budgeted"]},
                body=BODY,
                slow_body=SLOW_BODY,
                direct_body=DIRECT_BODY,
                rss=lambda: _rss_mb(gateway.pid),
                quick=args.quick,
                burst=args.burst or (1000 if args.quick else 5000),
            )
        if args.only in (None, "passthrough"):
            run_passthrough(gateway_url, upstream_url, key, quick=args.quick)
        if args.only in (None, "images"):
            run_images(gateway_url, upstream_url, key, lambda: _rss_mb(gateway.pid))
        if args.only in (None, "health"):
            run_health(gateway_url, hanging, key)
        if args.only in (None, "guardrails"):
            guard = [sys.executable, "-m", "bench.guardrails"]
            subprocess.run(guard, cwd=ROOT, env=env, check=True)
        if args.only in (None, "metrics"):
            run_metrics(env, BODY, key, quick=args.quick)
        if args.only in (None, "management"):
            usage = json.loads(
                subprocess.run(
                    [sys.executable, "-m", "bench.seed_usage", str(args.usage_records)],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            run_management(
                gateway_url, usage["admin"], usage["records"], lambda: _rss_mb(gateway.pid)
            )
        if args.only in (None, "dashboard"):
            dash = [sys.executable, "-m", "bench.dashboard", "--gateway", gateway_url]
            subprocess.run(dash, cwd=ROOT, env=env, check=True)
        if args.only in (None, "jobs"):
            run_jobs(env, upstream_url, key, BODY)
    finally:
        stack.close()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def _core(
    args: argparse.Namespace,
    gateway: subprocess.Popen[bytes],
    gateway_url: str,
    upstream_url: str,
    seeded: dict[str, Any],
) -> None:
    """Sections 1-3: the OpenAI-compatible route, billing, the race, slow upstreams."""
    database_url = f"{PG}/{DB_NAME}"
    auth = {"Authorization": f"Bearer {seeded['plain']}"}
    print("## Latency and throughput (1024x1024 PNG, n=1)")
    levels = [(1, 300), (16, 2000), (64, 4000)]
    if args.quick:
        levels = [(1, 100), (16, 500), (64, 1000)]
    figures = {}
    for concurrency, total in levels:
        run(
            f"{gateway_url}/v1/images/generations",
            BODY,
            auth,
            concurrency=concurrency,
            total=50,
        )
        direct = run(
            f"{upstream_url}/v1/images/generations",
            DIRECT_BODY,
            {},
            concurrency=concurrency,
            total=total,
        )
        via = run(
            f"{gateway_url}/v1/images/generations",
            BODY,
            auth,
            concurrency=concurrency,
            total=total,
        )
        figures[concurrency] = (direct, via)
        print(f"c={concurrency:<3} direct : {direct.summary()}")
        print(f"c={concurrency:<3} gateway: {via.summary()}")
    direct1, via1 = figures[1]
    added_p50 = (via1.percentile(50) - direct1.percentile(50)) * 1000
    added_p99 = (via1.percentile(99) - direct1.percentile(99)) * 1000
    print(f"\nadded latency at c=1: p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms")
    via64 = figures[64][1]
    print(f"gateway throughput at c=64: {len(via64.latencies) / via64.wall:.0f} req/s")

    print("\n## Billing path: 3 nested budgets (reserve + settle on each) vs none (record only)")
    for concurrency, total in levels[::2]:
        plain = run(
            f"{gateway_url}/v1/images/generations",
            BODY,
            auth,
            concurrency=concurrency,
            total=total,
        )
        budgeted = run(
            f"{gateway_url}/v1/images/generations",
            BODY,
            {"Authorization": f"Bearer {seeded['budgeted']}"},
            concurrency=concurrency,
            total=total,
        )
        print(f"c={concurrency:<3} no budget: {plain.summary()}")
        print(f"c={concurrency:<3} 3 budgets: {budgeted.summary()}")
        extra = (budgeted.percentile(50) - plain.percentile(50)) * 1000
        print(f"c={concurrency:<3} budgets add p50 {extra:.2f} ms")

    print(
        f"\n## The race: {args.race} concurrent requests, budget for {RACE_IMAGES} images, "
        "upstream 200 ms"
    )
    requests.post(f"{upstream_url}/_control/delay", json={"delay": 0.2}, timeout=5)
    race = run(
        f"{gateway_url}/v1/images/generations",
        BODY,
        {"Authorization": f"Bearer {seeded['race']}"},
        concurrency=args.race,
        total=args.race,
    )
    with psycopg.connect(database_url) as conn:
        budget_row = conn.execute(
            "SELECT used_micro, reserved_micro FROM billing_budget b JOIN tenants_apikey k "
            "ON b.key_id = k.id WHERE k.name = 'race'"
        ).fetchone()
        records_row = conn.execute(
            "SELECT count(*), coalesce(sum(cost_micro), 0) FROM billing_usagerecord u "
            "JOIN tenants_apikey k ON u.key_id = k.id WHERE k.name = 'race' AND u.status = 200"
        ).fetchone()
    assert budget_row is not None and records_row is not None
    used, reserved = budget_row
    records = records_row
    # Exact: never past the limit, and the budget says what the records say. The last few
    # images' worth may stay unused: a request holds its worst case, above the image's price.
    limit = RACE_IMAGES * seeded["price_micro"]
    exact = used == records[1] <= limit and race.ok * seeded["price_micro"] == used
    print(
        f"served {race.ok}, refused {race.statuses.get(402, 0)}, other {race.statuses}; "
        f"wall {race.wall:.2f} s"
    )
    print(
        f"budget used {used} µUSD, reserved {reserved}; usage records {records[0]} "
        f"summing {records[1]} µUSD, {limit - used} µUSD left unused "
        f"-> {'EXACT' if exact else 'NOT EXACT'}"
    )

    print(f"\n## {args.slow} concurrent requests against a 5-second upstream")
    requests.post(f"{upstream_url}/_control/delay", json={"delay": 5}, timeout=5)
    with peak_memory(lambda: _rss_mb(gateway.pid)) as memory:
        slow = run(
            f"{gateway_url}/v1/images/generations",
            BODY,
            auth,
            concurrency=args.slow,
            total=args.slow,
        )
    print(f"succeeded {slow.ok}/{args.slow}; statuses {slow.statuses}")
    p50, p99 = slow.percentile(50), slow.percentile(99)
    print(f"wall time {slow.wall:.2f} s; p50 {p50:.2f} s, p99 {p99:.2f} s")
    print(f"gateway memory: {memory.before:.0f} MB before, peak {memory.peak:.0f} MB during")


if __name__ == "__main__":
    main()
