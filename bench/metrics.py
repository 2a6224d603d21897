"""Metrics figures: what counting each request for Prometheus costs on the core path.

Two gateways that differ only by APERTURE_METRICS (on, the default, in multiprocess mode;
off: `false`) serve the core benchmark's request (1024x1024, n=1, the fake upstream) in turns,
in the same run: p50 at concurrency 1, requests/s at concurrency 64 and the CPU time the
gateway's workers spent per request (steadier than requests/s on a machine the load
generator and the upstream share), then the time a scrape of /metrics takes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.loadgen import Result, run
from bench.serve import gunicorn

PATH = "/v1/images/generations"
ROUNDS = 8  # runs per level and gateway, on and off in turn (first one, then the other), so
# that drift and whatever a run leaves behind (autovacuum after its inserts) hit both alike


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class _Gateway:
    url: str
    pid: int  # the gunicorn master's

    def cpu_seconds(self) -> float:
        """CPU time its workers have used so far (user + system)."""
        ticks = 0
        for child in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split():
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _gateway(env: dict[str, str], *, metrics: bool) -> Iterator[_Gateway]:
    served = {**env, "APERTURE_METRICS": "true" if metrics else "false"}
    with gunicorn(served, _free_port()) as gateway:
        yield _Gateway(gateway.url, gateway.pid)


def _merged(results: list[Result]) -> Result:
    merged = Result()
    for result in results:
        merged.latencies += result.latencies
        merged.wall += result.wall
        for status, count in result.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
    return merged


def run_metrics(env: dict[str, str], body: bytes, key: str, *, quick: bool = False) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    levels = [(1, 100), (64, 1000)] if quick else [(1, 300), (64, 3000)]
    print("\n## Metrics: the core path with metrics on vs off (APERTURE_METRICS=false)")
    turns: dict[tuple[int, str], list[Result]] = {}
    cpu: dict[tuple[int, str], float] = {}
    scrapes: list[float] = []
    size = 0
    # With both gateways the same, the one started first measured up to 15% fewer req/s at
    # c=64: each session starts them in the other order, and the figures are both sessions'.
    for session in range(2):
        with contextlib.ExitStack() as stack:
            names = ["on", "off"] if session == 0 else ["off", "on"]
            gateways = {
                name: stack.enter_context(_gateway(env, metrics=name == "on")) for name in names
            }
            for gateway in gateways.values():  # warm both: imports, connection pools, caches
                run(f"{gateway.url}{PATH}", body, auth, concurrency=8, total=200)
            for concurrency, total in levels:
                for turn in range(ROUNDS // 2):
                    for name in names if turn % 2 == 0 else names[::-1]:
                        gateway = gateways[name]
                        used = gateway.cpu_seconds()
                        result = run(
                            f"{gateway.url}{PATH}",
                            body,
                            auth,
                            concurrency=concurrency,
                            total=total,
                        )
                        used = gateway.cpu_seconds() - used
                        turns.setdefault((concurrency, name), []).append(result)
                        cpu[concurrency, name] = cpu.get((concurrency, name), 0.0) + used
            for _ in range(10):
                started = time.perf_counter()
                scrape = requests.get(f"{gateways['on'].url}/metrics", timeout=10)
                scrapes.append(time.perf_counter() - started)
                scrape.raise_for_status()
                size = len(scrape.content)
    figures = {level: _merged(results) for level, results in turns.items()}
    for concurrency, _ in levels:
        for name in ("on", "off"):
            figure = figures[concurrency, name]
            per_request = cpu[concurrency, name] / len(figure.latencies) * 1000
            print(
                f"c={concurrency:<3} metrics {name:<3}: {figure.summary()} "
                f"cpu={per_request:.3f}ms/req"
            )
    added = (figures[1, "on"].percentile(50) - figures[1, "off"].percentile(50)) * 1000
    print(f"metrics add p50 {added:.2f} ms at c=1")
    rates = {
        name: len(figures[64, name].latencies) / figures[64, name].wall for name in ("on", "off")
    }
    change = (rates["on"] / rates["off"] - 1) * 100
    print(
        f"throughput at c=64: {rates['on']:.0f} req/s with metrics, {rates['off']:.0f} "
        f"without ({change:+.1f}%)"
    )
    on, off = (cpu[64, name] / len(figures[64, name].latencies) for name in ("on", "off"))
    print(
        f"gateway CPU per request at c=64: {on * 1000:.3f} ms with metrics, {off * 1000:.3f} "
        f"without ({(on / off - 1) * 100:+.1f}%)"
    )
    scrapes.sort()
    print(f"a scrape of /metrics: p50 {scrapes[len(scrapes) // 2] * 1000:.1f} ms, {size} bytes")
