"""`n` images from an upstream that makes fewer per call: concurrent calls, merged in order.

dall-e-3 makes one image per call, so `n: 4` is four calls at once. If some fail, the caller
gets the images that came only when it asked for `allow_partial`; otherwise the first error.
Either way the caller pays only for the images it receives. A seeded request gives each
call its own seed (seed + the index of its first image), so the images differ and the
whole request is still reproducible.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from routing.images.validation import MAX_SEED
from routing.providers.base import ImageRequest, ImageResult, ProviderAdapter, ProviderError, Target


def split(n: int, per_call: int) -> list[int]:
    """How many images each call asks for: [2, 2, 1] for n=5 at 2 per call."""
    per_call = max(per_call, 1)
    return [min(per_call, n - start) for start in range(0, n, per_call)]


def _merged_usage(results: list[ImageResult]) -> dict[str, Any] | None:
    usages = [r.usage for r in results if r.usage]
    if not usages:
        return None
    total: dict[str, Any] = {}
    for usage in usages:
        for name, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
            elif isinstance(value, dict):
                inner = total.setdefault(name, {})
                for key, count in value.items():
                    if isinstance(count, int) and not isinstance(count, bool):
                        inner[key] = inner.get(key, 0) + count
    return total


def generate(adapter: ProviderAdapter, request: ImageRequest, target: Target) -> ImageResult:
    counts = split(request.n, adapter.capabilities(target.upstream_model, target.options).max_n)
    call = adapter.edit if request.is_edit else adapter.generate
    if len(counts) == 1:
        return call(request, target)
    requests, first = [], 0
    for count in counts:
        seed = None if request.seed is None else (request.seed + first) % (MAX_SEED + 1)
        requests.append(replace(request, n=count, seed=seed))
        first += count
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [pool.submit(call, part, target) for part in requests]
        outcomes: list[ImageResult | ProviderError] = []
        for future in futures:
            error = future.exception()
            if error is not None and not isinstance(error, ProviderError):
                raise error
            outcomes.append(error if error is not None else future.result())
    results = [o for o in outcomes if isinstance(o, ImageResult)]
    failures = [o for o in outcomes if isinstance(o, ProviderError)]
    if failures and not (request.allow_partial and results):
        raise failures[0]
    return ImageResult(
        images=[image for result in results for image in result.images],
        usage=_merged_usage(results),
        metadata=dict(results[0].metadata),
    )
