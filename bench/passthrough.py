"""Passthrough figures: added latency against calling the upstream directly, and throughput
of a large response relayed through the gateway versus downloaded directly."""

from __future__ import annotations

import time

import requests

from bench.loadgen import run

ECHO_BODY = b'{"input": "a small native request body"}'
IMAGE_BODY = (
    b'{"model": "gpt-image-1.5", "prompt": "a small benchmark image", "size": "1024x1024", '
    b'"quality": "low"}'
)
LARGE_BYTES = 100 * 1024 * 1024


def _download_mb_per_s(url: str, headers: dict[str, str]) -> tuple[float, float]:
    """Seconds and MB/s for one streamed download of LARGE_BYTES."""
    started = time.perf_counter()
    received = 0
    with requests.get(url, headers=headers, stream=True, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1024 * 1024):
            received += len(chunk)
    elapsed = time.perf_counter() - started
    assert received == LARGE_BYTES, received
    return elapsed, LARGE_BYTES / 2**20 / elapsed


def run_passthrough(gateway: str, upstream: str, key: str, *, quick: bool) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    levels = [(1, 100), (64, 1000)] if quick else [(1, 300), (64, 4000)]
    cases = [
        ("echo (relay only)", "/v1/echo", ECHO_BODY),
        ("image route (relay + pricing)", "/v1/images/generations", IMAGE_BODY),
    ]
    print("\n## Passthrough: added latency vs the upstream directly")
    for label, path, body in cases:
        for concurrency, total in levels:
            run(f"{gateway}/fake{path}", body, auth, concurrency=concurrency, total=50)
            direct = run(f"{upstream}{path}", body, {}, concurrency=concurrency, total=total)
            via = run(f"{gateway}/fake{path}", body, auth, concurrency=concurrency, total=total)
            added = (via.percentile(50) - direct.percentile(50)) * 1000
            print(f"{label}, c={concurrency:<3} direct : {direct.summary()}")
            print(f"{label}, c={concurrency:<3} gateway: {via.summary()}")
            print(f"{label}, c={concurrency:<3} added p50 {added:.2f} ms")

    print(f"\n## Passthrough: one {LARGE_BYTES // 2**20} MB response, 3 downloads each")
    for label, url, headers in (
        ("direct ", f"{upstream}/v1/big?bytes={LARGE_BYTES}", {}),
        ("gateway", f"{gateway}/fake/v1/big?bytes={LARGE_BYTES}", auth),
    ):
        runs = [_download_mb_per_s(url, headers) for _ in range(3)]
        best = max(rate for _, rate in runs)
        times = ", ".join(f"{seconds:.2f}s" for seconds, _ in runs)
        print(f"{label}: {times}; best {best:.0f} MB/s")
