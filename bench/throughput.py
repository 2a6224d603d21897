"""Throughput figures (#18 "Benchmark"), each next to the fake upstream called directly in the
same run: added latency at concurrency 1; requests/s at 16 and 64 with no budget and with
three nested budgets (workspace, team, key); a burst against a 10-s upstream under the three
budgets; and two gateway nodes (a second gunicorn master on the same PostgreSQL and Redis).

`python -m bench.throughput PORT` serves the burst's 10-s fake upstream (its own process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median

from bench.litellm_proxy import litellm_proxy
from bench.loadgen import Result, raise_fd_limit, run
from bench.serve import gunicorn, peak_memory
from tests.fakes import upstream

PATH = "/v1/images/generations"
SECOND_PORT = 9743
LITELLM_PORT = 9745
ROUNDS = 3  # of the throughput table
BURST_TIMEOUT = 300.0  # s a burst's request may take before the load generator gives up
SLOW_SECONDS = 10  # the burst's upstream answers each request this long after it came
# A direct burst past this many times SLOW_SECONDS measured the fake upstream thrashing (its
# thousands of threads), not a baseline: its round is left out of the median ratio.
UNSOUND_DIRECT = 2.0


def _rps(result: Result) -> float:
    return len(result.latencies) / result.wall if result.wall else 0.0


def _span(values: list[float], spec: str) -> str:
    return f"{min(values):{spec}}-{max(values):{spec}}"


def _ratios(values: list[float], bases: list[float]) -> list[float]:
    """Each round's value over its base, the same round's."""
    return [value / base for value, base in zip(values, bases, strict=True)]


def _paired(values: list[float], bases: list[float]) -> str:
    """Each round's value against its base, as a change: the median, then every round."""
    changes = [(ratio - 1) * 100 for ratio in _ratios(values, bases)]
    return f"{median(changes):+.0f}% ({', '.join(f'{c:+.0f}%' for c in changes)})"


def _times(values: list[float], bases: list[float]) -> str:
    """Each round's value as a multiple of its base: the median, then the range."""
    ratios = _ratios(values, bases)
    return f"{median(ratios):.1f}x ({_span(ratios, '.1f')})"


def _table(
    rows: dict[str, tuple[str, bytes, dict[str, str]]],
    levels: list[tuple[int, int]],
    rounds: int,
) -> dict[tuple[str, int], list[Result]]:
    """Every row at every level, `rounds` times. Each round runs the rows one after the
    other: the machine's speed drifts by half over minutes here, and rows measured side by
    side drift together."""
    for url, payload, headers in list(rows.values())[1:]:  # warm caches and pools
        run(f"{url}{PATH}", payload, headers, concurrency=16, total=50)
    figures: dict[tuple[str, int], list[Result]] = {}
    for _ in range(rounds):
        for concurrency, total in levels:
            for name, (url, payload, headers) in rows.items():
                figures.setdefault((name, concurrency), []).append(
                    run(f"{url}{PATH}", payload, headers, concurrency=concurrency, total=total)
                )
    return figures


def _odd(result: Result) -> str:
    """The answers other than 200, if any: a figure made of errors must say so."""
    return f" (non-200: {dict(sorted(result.errors.items()))})" if result.errors else ""


def _listen_backlog(port: int) -> str:
    """The listening sockets' accept-queue limits as the kernel applies them (ss's Send-Q):
    one socket per worker, or one shared by them all."""
    try:
        listed = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    limits = [line.split()[2] for line in listed if len(line.split()) > 2]
    if not limits:
        return "?"
    return f"{len(limits)} socket(s) x {limits[0]}"


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
    rounds = 1 if quick else ROUNDS
    workers = int(env.get("WEB_CONCURRENCY", "1"))

    print(
        "## Throughput: direct vs gateway (no budget, 3 nested budgets) vs LiteLLM "
        f"(1024x1024, n=1), median of {rounds} interleaved round(s)"
    )
    with litellm_proxy(
        upstream_url=upstream_url,
        alias=json.loads(body)["model"],
        model=json.loads(direct_body)["model"],
        port=LITELLM_PORT,
        workers=workers,
    ) as litellm:
        if litellm is not None:
            litellm_url, litellm_key = litellm
            rows["LiteLLM"] = (litellm_url, body, {"Authorization": f"Bearer {litellm_key}"})
        figures = _table(rows, levels, rounds)

    def p50_ms(name: str, i: int) -> float:
        return figures[name, 1][i].percentile(50) * 1000

    def rps(name: str, concurrency: int) -> list[float]:
        return [_rps(result) for result in figures[name, concurrency]]

    print(f"{'':<10} {'c=1 p50':>10} {'c=16 req/s':>11} {'c=64 req/s':>11}   (range over rounds)")
    for name in rows:
        c1 = [p50_ms(name, i) for i in range(rounds)]
        line = f"{name:<10} {median(c1):>7.2f} ms {median(rps(name, 16)):>11.0f}"
        line += f" {median(rps(name, 64)):>11.0f}   ({_span(c1, '.2f')} ms; "
        line += f"{_span(rps(name, 16), '.0f')}; {_span(rps(name, 64), '.0f')})"
        odd = "".join(_odd(r) for c, _ in levels for r in figures[name, c])
        print(line + odd)

    def added(name: str, p: float = 50) -> list[float]:
        """`name`'s latency at c=1 over the direct call's, in the same round."""
        return [
            (figures[name, 1][i].percentile(p) - figures["direct", 1][i].percentile(p)) * 1000
            for i in range(rounds)
        ]

    plain, budgeted = added("no budget"), added("3 budgets")
    print(
        f"added at c=1 (gateway - direct, same round): p50 {median(plain):.2f} ms "
        f"({_span(plain, '.2f')}), p99 {median(added('no budget', 99)):.2f} ms; "
        f"with 3 budgets p50 {median(budgeted):.2f} ms ({_span(budgeted, '.2f')}), "
        f"p99 {median(added('3 budgets', 99)):.2f} ms"
    )
    budget_change = _paired(rps("3 budgets", 64), rps("no budget", 64))
    print(f"3 budgets vs none at c=64, same round: {budget_change}")
    if "LiteLLM" in rows and any(r.errors for c, _ in levels for r in figures["LiteLLM", c]):
        print("(LiteLLM answered errors: no comparison)")
    elif "LiteLLM" in rows:
        print(
            f"LiteLLM at c=1 adds p50 {median(added('LiteLLM')):.2f} ms; at c=64 the gateway "
            f"serves {_times(rps('no budget', 64), rps('LiteLLM', 64))} LiteLLM's req/s with "
            f"no budget, {_times(rps('3 budgets', 64), rps('LiteLLM', 64))} with 3 budgets"
        )

    _burst(
        gateway_url=gateway_url,
        slow_url=slow_url,
        headers=auth["budgeted"],
        slow_body=slow_body,
        direct_body=direct_body,
        rss=rss,
        burst=burst,
        rounds=rounds,
        env=env,
    )

    total64 = levels[-1][1]
    print(
        f"\n## Two nodes: c=64 split 32/32 over two gunicorn masters ({total64} requests), "
        f"median of {rounds} round(s)"
    )
    # One node again beside two, in the same round: the table's figures are minutes old by
    # now, and the burst has left thousands of usage records and holds behind.
    nodes: dict[str, tuple[list[Result], list[Result]]] = {}
    with gunicorn(env, SECOND_PORT) as second:
        second_url = second.url
        one, both = [f"{gateway_url}{PATH}"], [f"{gateway_url}{PATH}", f"{second_url}{PATH}"]
        for name in ("no budget", "3 budgets"):
            run(f"{second_url}{PATH}", body, rows[name][2], concurrency=16, total=50)  # warm
        for _ in range(rounds):
            for name in ("no budget", "3 budgets"):
                headers = rows[name][2]
                single, split = nodes.setdefault(name, ([], []))
                single.append(run(one, body, headers, concurrency=64, total=total64))
                split.append(run(both, body, headers, concurrency=64, total=total64))
    print(f"{'':<10} {'1 node':>8} {'2 nodes':>8}  req/s at c=64 (range; table above: 1 node)")
    for name, (single, split) in nodes.items():
        alone, shared = [_rps(r) for r in single], [_rps(r) for r in split]
        odd = "".join(_odd(r) for r in single + split)
        print(
            f"{name:<10} {median(alone):>8.0f} {median(shared):>8.0f}  ({_span(alone, '.0f')}; "
            f"{_span(shared, '.0f')}; {median(rps(name, 64)):.0f}){odd}"
        )
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
    rounds: int,
    env: dict[str, str],
) -> None:
    """`burst` concurrent requests against a 10-s upstream, directly and through the gateway
    under three budgets, `rounds` times in turn: statuses, wall times (each gateway burst
    against the direct one just before it) and the gateway's peak memory."""
    print(
        f"\n## Burst: {burst:,} concurrent requests, {SLOW_SECONDS}-s upstream, key under 3 "
        f"nested budgets, {rounds} round(s)"
    )
    fd_limit = raise_fd_limit()
    overflows, first, peak, ratios = 0, 0.0, 0.0, []
    for _ in range(rounds):
        direct = run(
            f"{slow_url}{PATH}",
            direct_body,
            {},
            concurrency=burst,
            total=burst,
            timeout=BURST_TIMEOUT,
        )
        before = _listen_overflows()
        with peak_memory(rss) as memory:
            via = run(
                f"{gateway_url}{PATH}",
                slow_body,
                headers,
                concurrency=burst,
                total=burst,
                timeout=BURST_TIMEOUT,
            )
        overflows += _listen_overflows() - before
        first, peak = first or memory.before, max(peak, memory.peak)
        for name, result in (("gateway", via), ("direct", direct)):
            p50, p99 = result.percentile(50), result.percentile(99)
            print(
                f"{name:<7}: statuses {dict(sorted(result.statuses.items()))}; wall "
                f"{result.wall:.2f} s; p50 {p50:.2f} s, p99 {p99:.2f} s{_odd(result)}"
            )
        ratio = via.wall / direct.wall
        if direct.wall > UNSOUND_DIRECT * SLOW_SECONDS:
            print(
                f"gateway / direct wall time: {ratio:.2f}x, left out: the direct burst took over "
                f"{UNSOUND_DIRECT:g}x the upstream's {SLOW_SECONDS} s (the fake upstream thrashed)"
            )
            continue
        ratios.append(ratio)
        print(f"gateway / direct wall time: {ratio:.2f}x")
    if rounds > 1 and ratios:
        print(
            f"gateway / direct wall time, median of {len(ratios)} sound round(s) of {rounds}: "
            f"{median(ratios):.2f}x"
        )
    print(f"gateway memory (master + workers): {first:.0f} MB before the first, peak {peak:.0f} MB")
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
        f"accept-queue overflows during the gateway bursts: {overflows}"
    )


def serve_slow_upstream(port: int) -> None:
    """The burst's 10-s upstream: the fake, with a longer GIL switch interval. When 5,000 of
    its threads wake at once, the default 5 ms has each waiting thread wake every 5 ms to
    ask for the GIL, and the process spends its time in futex calls (a direct burst took
    15-56 s instead of 13-14 s, worse with each burst)."""
    sys.setswitchinterval(0.05)
    sys.argv = [sys.argv[0], "--port", str(port), "--no-usage", "--delay", str(SLOW_SECONDS)]
    upstream.main()


if __name__ == "__main__":
    serve_slow_upstream(int(sys.argv[1]))
