"""OpenAI's moderation endpoint (docs/providers.md §12): one call classifies one
input, text or an image, and answers whether it is flagged and a score per category."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from routing.providers.auth import credential_headers
from routing.providers.base import Target, UpstreamFailed
from routing.providers.http import check_status, json_object, read_whole, send

MAX_ANSWER_BYTES = 256 * 1024  # a moderation result is a few hundred bytes


@dataclass(frozen=True)
class Scores:
    flagged: bool
    categories: dict[str, float] = field(default_factory=dict)
    rejected: bool = False  # the endpoint refused the input itself (too long, unreadable)

    def matches(self, thresholds: dict[str, float]) -> list[str]:
        """The categories at or above their threshold; without thresholds, the model's own
        verdict. An input the endpoint refused matches as "input_rejected"."""
        if self.rejected:
            return ["input_rejected"]
        if thresholds:
            scores = self.categories
            return sorted(c for c, limit in thresholds.items() if scores.get(c, 0) >= limit)
        return ["flagged"] if self.flagged else []


def text_input(text: str) -> list[dict[str, object]]:
    return [{"type": "text", "text": text}]


def image_input(data_url: str) -> list[dict[str, object]]:
    return [{"type": "image_url", "image_url": {"url": data_url}}]


def _read_within(target: Target, url: str, body: dict[str, object]) -> dict[str, object]:
    """The answer, read whole within the target's timeout overall (not per read: an endpoint
    that drips its answer byte by byte cannot hold the request longer) and a size cap."""
    deadline = time.monotonic() + target.timeout_seconds
    response = send(
        target.provider,
        "POST",
        url,
        timeout=target.timeout_seconds,
        connect_timeout=target.connect_timeout_seconds,
        guarded=target.guarded,
        headers={**target.extra_headers, **credential_headers(target.provider, target.secret)},
        json_body=body,
        stream=True,
    )
    try:
        read_whole(target.provider, response, limit=MAX_ANSWER_BYTES, deadline=deadline)
    finally:
        response.close()
    check_status(target.provider, response)
    return json_object(target.provider, response)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def moderate(target: Target, content: list[dict[str, object]]) -> Scores:
    """Classify `content` with `target.upstream_model` (e.g. omni-moderation-latest);
    ProviderError if the endpoint fails, does not answer in time, or answers anything but a
    verdict (`flagged` and numeric `category_scores`)."""
    body = _read_within(
        target,
        f"{target.base_url}/v1/moderations",
        {"model": target.upstream_model, "input": content},
    )
    results = body.get("results")
    result = results[0] if isinstance(results, list) and results else None
    scores = result.get("category_scores") if isinstance(result, dict) else None
    if (
        not isinstance(result, dict)
        or not isinstance(result.get("flagged"), bool)
        or not isinstance(scores, dict)
        or not all(_number(score) for score in scores.values())
    ):
        raise UpstreamFailed(target.provider, f"{target.provider} returned no moderation verdict.")
    return Scores(
        flagged=result["flagged"],
        categories={str(name): float(score) for name, score in scores.items()},
    )
