"""Deployment health: an alias whose first deployment hangs, beside one with only the healthy
deployment, under the same load; and how many calls the hanging upstream received."""

from __future__ import annotations

import json

from bench.loadgen import run
from tests.fakes.upstream import FakeUpstream

TOTAL, CONCURRENCY = 200, 16


def _body(model: str) -> bytes:
    return json.dumps(
        {"model": model, "prompt": "a small benchmark image", "size": "1024x1024", "quality": "low"}
    ).encode()


def run_health(gateway: str, hanging: FakeUpstream, key: str) -> None:
    print(f"\n## Deployment health: {TOTAL} requests at c={CONCURRENCY}")
    print("(first deployment answers after 10 s, read timeout 2 s, retry_after_timeout on)")
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{gateway}/v1/images/generations"
    well = run(url, _body("bench-image"), auth, concurrency=CONCURRENCY, total=TOTAL)
    sick = run(url, _body("bench-resilient"), auth, concurrency=CONCURRENCY, total=TOTAL)
    calls = sum(1 for r in hanging.requests if r.method == "POST")
    print(f"healthy only   : {well.summary()}")
    print(f"hanging + well : {sick.summary()}")
    print(f"calls the hanging upstream received: {calls} of {TOTAL}")
