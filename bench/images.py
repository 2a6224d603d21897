"""Image figures: the server's peak memory under large edits and large generations, and a
stream's time to its first partial image through the gateway versus direct."""

from __future__ import annotations

import io
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

from bench.seed import STREAM_MODEL

CONCURRENT = 20


def _noise_png(size: int) -> bytes:
    side = int((size / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _peak_during(
    rss: Callable[[], float], work: Callable[[], list[int]]
) -> tuple[list[int], float, float, float]:
    """(statuses, seconds, RSS before, peak RSS) of running `work`."""
    before = peak = rss()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        statuses = work()
    finally:
        stop.set()
        sampler.join()
    return statuses, time.perf_counter() - started, before, peak


def _concurrently(call: Callable[[int], int]) -> list[int]:
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        return list(pool.map(call, range(CONCURRENT)))


def _first_event_seconds(url: str, body: dict, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    with requests.post(url, json=body, headers=headers, stream=True, timeout=60) as response:
        response.raise_for_status()
        chunks = response.iter_content(None)  # one reader: a second one would see nothing
        next(chunks)
        first = time.perf_counter() - started
        for _ in chunks:
            pass
    return first


def run_images(gateway: str, upstream: str, key: str, rss: Callable[[], float]) -> None:
    auth = {"Authorization": f"Bearer {key}"}

    upload = _noise_png(20 * 1024 * 1024)
    print(f"\n## {CONCURRENT} concurrent edits, each uploading a {len(upload) / 2**20:.1f} MB PNG")

    def edit(_: int) -> int:
        response = requests.post(
            f"{gateway}/v1/images/edits",
            files={"image": ("big.png", upload, "image/png")},
            data={"model": "bench-gpt", "prompt": "a benchmark edit", "size": "1024x1024"},
            headers=auth,
            timeout=300,
        )
        return response.status_code

    statuses, seconds, before, peak = _peak_during(rss, lambda: _concurrently(edit))
    print(f"statuses {sorted(set(statuses))} x{len(statuses)}; wall {seconds:.2f} s")
    print(f"gateway memory: {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB)")

    requests.post(f"{upstream}/_control/image_bytes", json={"bytes": 4 * 1024 * 1024}, timeout=60)
    print(f"\n## {CONCURRENT} concurrent generations, each n=4 images of ~4 MB")

    def generate(_: int) -> int:
        response = requests.post(
            f"{gateway}/v1/images/generations",
            json={"model": "bench-gpt", "prompt": "a big image", "n": 4, "size": "1024x1024"},
            headers=auth,
            timeout=300,
        )
        return response.status_code

    statuses, seconds, before, peak = _peak_during(rss, lambda: _concurrently(generate))
    requests.post(f"{upstream}/_control/image_bytes", json={"bytes": 0}, timeout=60)
    print(f"statuses {sorted(set(statuses))} x{len(statuses)}; wall {seconds:.2f} s")
    print(f"gateway memory: {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB)")

    print("\n## Streaming: time to the first partial image (20 requests each, p50 / max)")
    body = {"prompt": "a stream", "stream": True, "partial_images": 2, "size": "1024x1024"}
    for label, url, model, headers in (
        ("direct ", f"{upstream}/v1/images/generations", STREAM_MODEL, {}),
        ("gateway", f"{gateway}/v1/images/generations", "bench-gpt", auth),
    ):
        firsts = [_first_event_seconds(url, {**body, "model": model}, headers) for _ in range(20)]
        print(
            f"{label}: p50 {statistics.median(firsts) * 1000:.2f} ms, "
            f"max {max(firsts) * 1000:.2f} ms"
        )
