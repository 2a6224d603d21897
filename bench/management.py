"""Management API figures: usage aggregates and the CSV export over many records.

Sequential requests (concurrency 1) against the gateway: the summary by day, key and alias
over 30 days of records, the first page of records, the key list, and a CSV export of every
record (rows/s, and the gateway's memory while it streams).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import requests


def _p50_ms(session: requests.Session, url: str, repeat: int) -> tuple[float, float]:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = session.get(url, timeout=120)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text[:300]
    return statistics.median(timings), max(timings)


def run_management(
    gateway_url: str, admin_key: str, records: int, rss_mb: Callable[[], float]
) -> None:
    print(f"\n## Management API ({records:,} usage records over 30 days, concurrency 1)")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {admin_key}"
    api = f"{gateway_url}/api/v1"
    for label, path, repeat in (
        ("GET /keys (21 keys)", "/keys", 30),
        ("GET /usage, first page of 50 records", "/usage", 30),
        ("GET /usage?key=…&status=error, first page", None, 30),
        ("GET /usage/summary?group_by=day", "/usage/summary?group_by=day", 10),
        ("GET /usage/summary?group_by=key", "/usage/summary?group_by=key", 10),
        ("GET /usage/summary?group_by=alias&start=<7 days ago>", None, 10),
    ):
        if path is None and "key=" in label:
            key_id = session.get(f"{api}/keys?limit=1", timeout=10).json()["results"][0]["id"]
            path = f"/usage?key={key_id}&status=error"
        if path is None:
            since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 7 * 86400))
            path = f"/usage/summary?group_by=alias&start={since}"
        p50, worst = _p50_ms(session, api + path, repeat)
        print(f"  {label:55s} p50 {p50:8.1f} ms   max {worst:8.1f} ms")

    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            done.wait(0.05)

    before = rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    rows, size = 0, 0
    with session.get(f"{api}/usage?format=csv", stream=True, timeout=600) as response:
        assert response.status_code == 200
        for chunk in response.iter_lines():
            rows += 1
            size += len(chunk) + 1
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    print(
        f"  CSV export of every record: {rows - 1:,} rows, {size / 1e6:.1f} MB in {elapsed:.1f} s "
        f"({(rows - 1) / elapsed:,.0f} rows/s); gateway RSS {before:.0f} MB → peak {peak[0]:.0f} MB"
    )
