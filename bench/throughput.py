"""Throughput figures (#18 "Benchmark"), each next to the fake upstream called directly in the
same run: added latency at concurrency 1; requests/s at 16 and 64 with no budget and with
three nested budgets (workspace, team, key); a burst against a 10-s upstream under the three
budgets; and two gateway nodes (a second gunicorn master on the same PostgreSQL and Redis).

`python -m bench.throughput PORT` serves the burst's 10-s fake upstream (its own process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.loadgen import Result, raise_fd_limit, run
from bench.serve import gunicorn, peak_memory
from tests.fakes import upstream

PATH = "/v1/images/generations"
SECOND_PORT = 9743
BURST_TIMEOUT = 300.0  # s a burst's request may take before the load generator gives up


def _rps(result: Result) -> float:
    return len(result.latencies) / result.wall if result.wall else 0.0


def _odd(result: Result) -> str:
    """The answers other than 200, if any: a figure made of errors must say so."""
    return f" (non-200: {dict(sorted(result.errors.items()))})" if result.errors else ""


def _listen_backlog(port: int) -> str:
    """The listening socket's accept-queue limit as the kernel applies it (ss's Send-Q)."""
    try:
        listed = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return listed[2] if len(listed) > 2 else "?"


def _listen_overflows() -> int:
    """The kernel's count of connections dropped for a full accept queue (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0)) + int(table.get("ListenDrops", 0))
    return 0


def run_throughput(
    *,
    env: dict[str, str],
    gateway_url: str,
    upstream_url: str,
    slow_url: str,
    keys: dict[str, str],
    body: bytes,
    slow_body: bytes,
    direct_body: bytes,
    rss: Callable[[], float],
    quick: bool,
    burst: int,
) -> None:
    auth = {name: {"Authorization": f"Bearer {keys[name]}"} for name in ("plain", "budgeted")}
    rows: dict[str, tuple[str, bytes, dict[str, str]]] = {
        "direct": (upstream_url, direct_body, {}),
        "no budget": (gateway_url, body, auth["plain"]),
        "3 budgets": (gateway_url, body, auth["budgeted"]),
    }
    levels = [(1, 100), (16, 500), (64, 1000)] if quick else [(1, 300), (16, 2000), (64, 4000)]

    print("## Throughput: direct vs gateway, no budget vs 3 nested budgets (1024x1024, n=1)")
    for url, payload, headers in list(rows.values())[1:]:  # warm each key's caches and pools
        run(f"{url}{PATH}", payload, headers, concurrency=16, total=50)
    figures: dict[tuple[str, int], Result] = {}
    for concurrency, total in levels:
        for name, (url, payload, headers) in rows.items():
            figures[name, concurrency] = run(
                f"{url}{PATH}", payload, headers, concurrency=concurrency, total=total
            )
    print(f"{'':<10} {'c=1 p50':>10} {'c=16 req/s':>11} {'c=64 req/s':>11}")
    for name in rows:
        p50 = figures[name, 1].percentile(50) * 1000
        line = f"{name:<10} {p50:>7.2f} ms {_rps(figures[name, 16]):>11.0f}"
        line += f" {_rps(figures[name, 64]):>11.0f}"
        print(line + "".join(_odd(figures[name, c]) for c, _ in levels))
    direct1, plain1 = figures["direct", 1], figures["no budget", 1]
    added_p50 = (plain1.percentile(50) - direct1.percentile(50)) * 1000
    added_p99 = (plain1.percentile(99) - direct1.percentile(99)) * 1000
    budgeted_p50 = (figures["3 budgets", 1].percentile(50) - direct1.percentile(50)) * 1000
    print(
        f"added at c=1 (gateway - direct): p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms; "
        f"with 3 budgets p50 {budgeted_p50:.2f} ms"
    )
    none64, three64 = _rps(figures["no budget", 64]), _rps(figures["3 budgets", 64])
    print(f"3 budgets vs none at c=64: {(three64 / none64 - 1) * 100:+.0f}%")

    _burst(
        gateway_url=gateway_url,
        slow_url=slow_url,
        headers=auth["budgeted"],
        slow_body=slow_body,
        direct_body=direct_body,
        rss=rss,
        burst=burst,
        env=env,
    )

    total64 = levels[-1][1]
    print(f"\n## Two nodes: c=64 split 32/32 over two gunicorn masters ({total64} requests)")
    # One node again just before two: the table's figure is minutes old by now, and the burst
    # has left thousands of usage records and holds behind.
    nodes: dict[str, tuple[Result, Result]] = {}
    with gunicorn(env, SECOND_PORT) as second:
        second_url = second.url
        one, both = [f"{gateway_url}{PATH}"], [f"{gateway_url}{PATH}", f"{second_url}{PATH}"]
        for name in ("no budget", "3 budgets"):
            headers = rows[name][2]
            run(f"{second_url}{PATH}", body, headers, concurrency=16, total=50)  # warm
            single = run(one, body, headers, concurrency=64, total=total64)
            nodes[name] = (single, run(both, body, headers, concurrency=64, total=total64))
    print(f"{'':<10} {'1 node':>8} {'2 nodes':>8}  req/s at c=64 (table above: 1 node)")
    for name, (single, split) in nodes.items():
        print(
            f"{name:<10} {_rps(single):>8.0f} {_rps(split):>8.0f}  "
            f"({_rps(figures[name, 64]):.0f}){_odd(single)}{_odd(split)}"
        )
    workers = int(env.get("WEB_CONCURRENCY", "1"))
    print(
        f"(2 x {workers} gevent workers on {os.cpu_count()} cores, shared with the load "
        "generator, the fake upstream, PostgreSQL and Redis)"
    )


def _burst(
    *,
    gateway_url: str,
    slow_url: str,
    headers: dict[str, str],
    slow_body: bytes,
    direct_body: bytes,
    rss: Callable[[], float],
    burst: int,
    env: dict[str, str],
) -> None:
    """`burst` concurrent requests against a 10-s upstream, directly and through the gateway
    under three budgets: statuses, wall times and the gateway's peak memory."""
    print(f"\n## Burst: {burst:,} concurrent requests, 10-s upstream, key under 3 nested budgets")
    fd_limit = raise_fd_limit()
    direct = run(
        f"{slow_url}{PATH}", direct_body, {}, concurrency=burst, total=burst, timeout=BURST_TIMEOUT
    )
    overflows = _listen_overflows()
    with peak_memory(rss) as memory:
        via = run(
            f"{gateway_url}{PATH}",
            slow_body,
            headers,
            concurrency=burst,
            total=burst,
            timeout=BURST_TIMEOUT,
        )
    overflows = _listen_overflows() - overflows
    for name, result in (("gateway", via), ("direct", direct)):
        p50, p99 = result.percentile(50), result.percentile(99)
        print(
            f"{name:<7}: statuses {dict(sorted(result.statuses.items()))}; wall "
            f"{result.wall:.2f} s; p50 {p50:.2f} s, p99 {p99:.2f} s{_odd(result)}"
        )
    print(f"gateway / direct wall time: {via.wall / direct.wall:.2f}x")
    print(
        f"gateway memory (master + workers): {memory.before:.0f} MB before, "
        f"peak {memory.peak:.0f} MB"
    )
    # What bounds a burst: gunicorn.conf.py's defaults as the gateway was started.
    connections = int(env.get("APERTURE_WORKER_CONNECTIONS", "4000"))
    in_flight = env.get("APERTURE_MAX_IN_FLIGHT", str(int(connections * 0.95)))
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    print(
        f"limits: load generator open files {fd_limit}; gateway listen backlog "
        f"{_listen_backlog(int(gateway_url.rsplit(':', 1)[1]))} (somaxconn {somaxconn}); "
        f"{env.get('WEB_CONCURRENCY', '1')} workers x {connections} connections, "
        f"{in_flight} in flight each before 503 overloaded, "
        f"{env.get('APERTURE_WORK_SLOTS', '16')} of them at work at once; "
        f"accept-queue overflows during the gateway burst: {overflows}"
    )


def serve_slow_upstream(port: int) -> None:
    """The burst's 10-s upstream: the fake, with a longer GIL switch interval. When 5,000 of
    its threads wake at once, the default 5 ms has each waiting thread wake every 5 ms to
    ask for the GIL, and the process spends its time in futex calls (a direct burst took
    15-56 s instead of 13-14 s, worse with each burst)."""
    sys.setswitchinterval(0.05)
    sys.argv = [sys.argv[0], "--port", str(port), "--no-usage", "--delay", "10"]
    upstream.main()


if __name__ == "__main__":
    serve_slow_upstream(int(sys.argv[1]))
