"""OpenAI's moderation endpoint (docs/providers.md §12): one call classifies one
input, text or an image, and answers whether it is flagged and a score per category."""

from __future__ import annotations

from dataclasses import dataclass

from routing.providers.base import Target, UpstreamFailed
from routing.providers.http import post_json


@dataclass(frozen=True)
class Scores:
    flagged: bool
    categories: dict[str, float]

    def matches(self, thresholds: dict[str, float]) -> list[str]:
        """The categories at or above their threshold; without thresholds, the model's own
        verdict (every category it flagged, or "flagged")."""
        if thresholds:
            return sorted(
                c for c, limit in thresholds.items() if self.categories.get(c, 0) >= limit
            )
        return ["flagged"] if self.flagged else []


def text_input(text: str) -> list[dict[str, object]]:
    return [{"type": "text", "text": text}]


def image_input(data_url: str) -> list[dict[str, object]]:
    return [{"type": "image_url", "image_url": {"url": data_url}}]


def moderate(target: Target, content: list[dict[str, object]]) -> Scores:
    """Classify `content` with `target.upstream_model` (e.g. omni-moderation-latest);
    ProviderError if the endpoint fails or does not answer within the target's timeout."""
    body = post_json(
        target,
        f"{target.base_url}/v1/moderations",
        {"model": target.upstream_model, "input": content},
    )
    results = body.get("results")
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        raise UpstreamFailed(target.provider, f"{target.provider} returned no moderation result.")
    result = results[0]
    raw_scores = result.get("category_scores")
    scores = {
        str(name): float(score)
        for name, score in (raw_scores.items() if isinstance(raw_scores, dict) else [])
        if isinstance(score, int | float) and not isinstance(score, bool)
    }
    return Scores(flagged=result.get("flagged") is True, categories=scores)
