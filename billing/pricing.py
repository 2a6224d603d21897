"""What a request may cost (the estimate that is reserved) and what it did cost.

Prices match an upstream model exactly or by a prefix pattern (`gpt-image-1*`); the most
specific row wins (exact model, then the longest prefix; a row for the exact size and
quality beats one for any). Model ids match case-sensitively, as the providers match them.
A model without a price is not served (`require_price`: 400 `model_not_priced`) unless an
operator marked its credential or deployment free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aperture import config_cache
from aperture.errors import InvalidRequest
from billing.models import Price

logger = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


def _prices(provider: str) -> list[Price]:
    return config_cache.cached(
        ("prices", provider), lambda: list(Price.objects.filter(provider=provider))
    )


def _model_score(pattern: str, model: str) -> int:
    """How specifically `pattern` names `model`: -1 for no match."""
    if pattern == model:
        return 10_000
    if pattern.endswith("*") and model.startswith(pattern[:-1]):
        return len(pattern)
    return -1


def _candidates(provider: str, model: str) -> list[Price]:
    scored = [(_model_score(p.model_pattern, model), p) for p in _prices(provider)]
    best = max((score for score, _ in scored), default=-1)
    return [p for score, p in scored if score == best and score >= 0]


def _warn_unpriced(provider: str, model: str) -> None:
    if (provider, model) not in _warned:
        _warned.add((provider, model))
        logger.warning("no price for %s model %s (served only if marked free)", provider, model)


class ModelNotPriced(InvalidRequest):
    code = "model_not_priced"


def require_price(provider: str, model: str, *, free: bool, param: str | None = "model") -> None:
    """Refuse a model that would be served for nothing by accident (400 before any call)."""
    if free or has_price(provider, model):
        return
    raise ModelNotPriced(
        f"The model '{model}' ({provider}) has no price, so this gateway does not serve it; "
        "an operator must add a price or mark its credential or deployment free.",
        param=param,
    )


def token_count(value: Any) -> int:
    """A token count from an upstream's usage; anything odd counts as 0, never a 500."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def has_price(provider: str, model: str) -> bool:
    return bool(_candidates(provider, model))


def _matches(price: Price, size: str | None, quality: str | None) -> bool:
    """`None` or "auto" means the caller left it open: every variant could apply."""
    size_ok = not price.size or size in (None, "auto") or price.size == size
    quality_ok = not price.quality or quality in (None, "auto") or price.quality == quality
    return size_ok and quality_ok


def per_image_estimate(provider: str, model: str, size: str | None, quality: str | None) -> int:
    """The most one image may cost: the dearest per-image price the request could hit."""
    candidates = _candidates(provider, model)
    if not candidates:
        _warn_unpriced(provider, model)
        return 0
    # A size or quality no price names may be read by the upstream as any of them.
    if size not in {p.size for p in candidates if p.size}:
        size = None
    if quality not in {p.quality for p in candidates if p.quality}:
        quality = None
    amounts = [
        p.per_image_micro
        for p in candidates
        if p.per_image_micro is not None and _matches(p, size, quality)
    ]
    return max(amounts, default=0)


def _specific(candidates: list[Price], size: str | None, quality: str | None) -> Price | None:
    def specificity(price: Price) -> tuple[int, int]:
        return (int(bool(price.size) and price.size == size), int(bool(price.quality)))

    exact = [
        p
        for p in candidates
        if (not p.size or p.size == size) and (not p.quality or p.quality == quality)
    ]
    return max(exact, key=specificity, default=None)


def _token_cost(price: Price, usage: Mapping[str, Any]) -> int | None:
    output = usage.get("output_tokens")
    if not isinstance(output, int) or price.image_output_per_mtok_micro is None:
        return None
    details = usage.get("input_tokens_details") or {}
    text_in = details.get("text_tokens", usage.get("input_tokens", 0)) or 0
    image_in = details.get("image_tokens", 0) or 0
    total = (
        output * price.image_output_per_mtok_micro
        + text_in * (price.text_input_per_mtok_micro or 0)
        + image_in * (price.image_input_per_mtok_micro or 0)
    )
    return -(-total // 1_000_000)  # micro-USD, rounded up


def actual_cost(
    provider: str,
    model: str,
    *,
    images: int,
    size: str | None,
    quality: str | None,
    usage: Mapping[str, Any] | None,
) -> int:
    """What a served request cost: tokens when the upstream reported them and the model is
    token-priced, else its images at the price for their size and quality."""
    candidates = _candidates(provider, model)
    if not candidates:
        _warn_unpriced(provider, model)
        return 0
    if usage:
        token_priced = next((p for p in candidates if p.token_priced), None)
        if token_priced is not None:
            cost = _token_cost(token_priced, usage)
            if cost is not None:
                return cost
    price = _specific(candidates, size, quality)
    if price is None or price.per_image_micro is None:
        return images * per_image_estimate(provider, model, size, quality)
    return images * price.per_image_micro
