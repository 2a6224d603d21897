"""What a request may cost (the estimate that is reserved) and what it did cost: one rule,
`quote`, for both.

Prices match an upstream model exactly or by a prefix pattern (`gpt-image-1*`); the most
specific pattern wins (exact model, then the longest prefix). Model ids match
case-sensitively, as the providers match them. Among that pattern's rows, a row names a
size, a quality and a resolution tier, or leaves each open; the row for the exact variant
beats one for any. A row prices an image one of three ways:

- per image (`per_image_micro`);
- per megapixel, as Black Forest Labs bills FLUX.2: the first megapixel, then each further
  one, rounded up (1920x1080 = 2.07 MP: 3 MP billed = first + 2 x extra); a megapixel is
  1,000,000 pixels;
- per token, when the upstream reports its usage and the pattern has token rates (OpenAI's
  GPT image models); without usage, the per-image rows price it.

On top: a surcharge per input or reference image (`per_input_image_micro`, counted by the
caller for every upstream call that receives them), and a minimum per served request.

The estimate (`worst_case=True`) is the most the request can cost: an open size is the
largest the model makes, an open quality or tier the dearest row. The settle prices what
was made, as far as it is known; what is not known is priced as in the estimate. A model
without a price is not served (`require_price`: 400 `model_not_priced`) unless an operator
marked its credential or deployment free. Every quote carries a snapshot of the row and the
figures it used, kept on the usage record, so that editing a price never rewrites history.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aperture import config_cache
from aperture.errors import InvalidRequest
from billing.models import Price

logger = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()

MEGAPIXEL = 1_000_000
# A resolution tier is the area of a square of this side ("512" is Gemini's smallest).
TIER_SIDES = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}


@dataclass(frozen=True)
class Quote:
    """A price, in micro-USD at the provider's rate (before any markup), and how it was
    reached."""

    cost_micro: int
    snapshot: dict[str, Any] = field(default_factory=dict)


# Models whose rows a provider's table remembers; past it, it starts over. Only names of a
# deployment's length are remembered, and only priced ones: a passthrough body names any
# model it likes, of any length, and must not make the table grow.
_REMEMBERED_MODELS = 256
_REMEMBERED_NAME_CHARS = 200
_REMEMBERED_ASKS = 1024  # priced asks (model, images, size, ...) a table remembers


def _model_score(pattern: str, model: str) -> int:
    """How specifically `pattern` names `model`: -1 for no match."""
    if pattern == model:
        return 10_000
    if pattern.endswith("*") and model.startswith(pattern[:-1]):
        return len(pattern)
    return -1


@dataclass
class _PriceTable:
    """A provider's price rows, the rows that price each model asked for so far (a request
    asks for them three times: to serve the model, to estimate and to settle), and what each
    ask priced so far (`priced`). All are dropped together when a price changes
    (aperture/config_cache.py)."""

    rows: tuple[Price, ...]
    by_model: dict[str, tuple[Price, ...]] = field(default_factory=dict)
    by_ask: dict[tuple[Any, ...], _Priced] = field(default_factory=dict)

    def candidates(self, model: str) -> tuple[Price, ...]:
        """The rows of the most specific pattern naming `model`."""
        found = self.by_model.get(model)
        if found is None:
            scored = [(_model_score(p.model_pattern, model), p) for p in self.rows]
            best = max((score for score, _ in scored), default=-1)
            found = tuple(p for score, p in scored if score == best and score >= 0)
            if found and len(model) <= _REMEMBERED_NAME_CHARS:
                _remember(self.by_model, model, found, _REMEMBERED_MODELS)
        return found

    def priced(self, ask: tuple[Any, ...], price: Callable[[], _Priced]) -> _Priced:
        """What `price()` says for this ask, worked out once per table: it depends only on
        the rows and the ask, and most requests ask what others asked before."""
        found = self.by_ask.get(ask)
        if found is None:
            found = price()
            if all(len(part) <= _REMEMBERED_NAME_CHARS for part in ask if isinstance(part, str)):
                _remember(self.by_ask, ask, found, _REMEMBERED_ASKS)
        return found


def _remember(memo: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """`memo[key] = value`, starting the memo over once it holds `limit` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value


def _table(provider: str) -> _PriceTable:
    return config_cache.cached(
        ("prices", provider), lambda: _PriceTable(tuple(Price.objects.filter(provider=provider)))
    )


def _candidates(provider: str, model: str) -> tuple[Price, ...]:
    return _table(provider).candidates(model)


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


def pixels(size: str | None) -> tuple[int, int] | None:
    """ "WxH" as numbers; None for "auto", None or anything else."""
    if not size:
        return None
    width, sep, height = size.partition("x")
    if sep and width.isdigit() and height.isdigit():
        return int(width), int(height)
    return None


def billed_megapixels(size: str, *, on_grid: bool = False) -> int:
    """Megapixels of an image of this size as FLUX.2 bills them: rounded up, at least 1.
    `on_grid` (the estimate): each side first rounded up to the multiple of 16 an adapter may
    send instead (FLUX.2 takes only those), so the hold covers the size actually made."""
    found = pixels(size)
    if found is None:
        return 1
    width, height = found
    if on_grid:
        width, height = -(-width // SIZE_GRID) * SIZE_GRID, -(-height // SIZE_GRID) * SIZE_GRID
    return max(1, math.ceil(width * height / MEGAPIXEL))


# The grid FLUX.2 sizes snap to: an estimate prices a size rounded up to it.
SIZE_GRID = 16
# The estimate of a token-priced model (gpt-image-1.5/2.x) holds its per-image row, which
# covers the output tokens, plus the most its inputs may add: each input image at this many
# image tokens (a high-fidelity input stays below it: unconfirmed ceiling, docs/providers.md
# §10) and every byte of the prompt as a text token.
MAX_INPUT_IMAGE_TOKENS = 8_192


def _nearest_tier(size: str, tiers: set[str]) -> str | None:
    """Of the tiers the rows name, the one whose area is nearest (in log scale) to `size`."""
    found = pixels(size)
    known = [t for t in tiers if t in TIER_SIDES]
    if found is None or not known:
        return None
    area = math.log(found[0] * found[1])
    return min(known, key=lambda t: abs(area - math.log(TIER_SIDES[t] ** 2)))


def _token_cost(price: Price, usage: Mapping[str, Any]) -> tuple[int, dict[str, int]] | None:
    output = usage.get("output_tokens")
    if not isinstance(output, int) or price.image_output_per_mtok_micro is None:
        return None
    details = usage.get("input_tokens_details") or {}
    text_in = token_count(details.get("text_tokens", usage.get("input_tokens", 0)))
    image_in = token_count(details.get("image_tokens", 0))
    output = token_count(output)
    total = (
        output * price.image_output_per_mtok_micro
        + text_in * (price.text_input_per_mtok_micro or 0)
        + image_in * (price.image_input_per_mtok_micro or 0)
    )
    tokens = {"text_input": text_in, "image_input": image_in, "image_output": output}
    return -(-total // 1_000_000), tokens  # micro-USD, rounded up


@dataclass(frozen=True)
class _Ask:
    """What is priced, with the open parts left None."""

    size: str | None  # what the image price is read at (the largest, when open)
    quality: str | None
    tier: str | None


def _matches(price: Price, ask: _Ask) -> bool:
    """A row names nothing, or what is asked; an open part matches every row."""
    return all(
        not named or wanted is None or named == wanted
        for named, wanted in (
            (price.size, ask.size),
            (price.quality, ask.quality),
            (price.tier, ask.tier),
        )
    )


def _narrowed(rows: list[Price], ask: _Ask) -> list[Price]:
    """The rows that would price what is asked: for each part asked, those naming it if any
    do (a row for the exact variant beats one for any); an open part keeps every row."""
    for part in ("size", "quality", "tier"):
        wanted = getattr(ask, part)
        if wanted is not None and any(getattr(p, part) == wanted for p in rows):
            rows = [p for p in rows if getattr(p, part) == wanted]
    return rows


def _priced_per_image(price: Price) -> bool:
    return price.per_image_micro is not None or price.first_megapixel_micro is not None


def _image_price(
    price: Price, size: str | None, *, worst_case: bool = False
) -> tuple[int, dict[str, Any]]:
    """One image at this row, and the figures used."""
    if price.first_megapixel_micro is not None:
        megapixels = billed_megapixels(size, on_grid=worst_case) if size else 1
        extra = price.extra_megapixel_micro or 0
        unit = price.first_megapixel_micro + (megapixels - 1) * extra
        figures = {
            "rule": "per_megapixel",
            "megapixels": megapixels,
            "first_megapixel_micro": price.first_megapixel_micro,
            "extra_megapixel_micro": extra,
        }
        return unit, figures
    return price.per_image_micro or 0, {"rule": "per_image"}


def _open(value: str | None, named: set[str]) -> str | None:
    """A value no row names may be read by the upstream as any of them: left open."""
    return value if value in named else None


def quote(
    provider: str,
    model: str,
    *,
    images: int,
    size: str | None = None,
    quality: str | None = None,
    tier: str | None = None,
    input_images: int = 0,
    usage: Mapping[str, Any] | None = None,
    largest: str | None = None,
    worst_case: bool = False,
    prompt_bytes: int = 0,
) -> Quote:
    """What `images` images of this model cost (`worst_case`: at most).

    `size` is "WxH" or None (open: priced at `largest`, the largest size the model makes);
    `quality` and `tier` None or "auto" are open; `input_images` is how many input or
    reference images the upstream is sent, counted per upstream call; `usage` is the
    upstream's (OpenAI's shape), read only when settling."""
    table = _table(provider)
    candidates = table.candidates(model)
    if not candidates:
        _warn_unpriced(provider, model)
        return Quote(0, {})
    if images <= 0:
        return Quote(0, {})
    if usage:  # what the upstream reported: no two alike
        priced = _priced(
            candidates, images, size, quality, tier, input_images, usage, largest, worst_case
        )
    else:
        priced = table.priced(
            (model, images, size, quality, tier, input_images, largest, worst_case),
            lambda: _priced(
                candidates, images, size, quality, tier, input_images, None, largest, worst_case
            ),
        )
    cost, figures = priced.cost_micro, dict(priced.figures)
    if worst_case and priced.token_row is not None:  # what input tokens may add to the settle
        token_row = priced.token_row
        allowance = -(
            -(
                input_images * MAX_INPUT_IMAGE_TOKENS * (token_row.image_input_per_mtok_micro or 0)
                + prompt_bytes * (token_row.text_input_per_mtok_micro or 0)
            )
            // 1_000_000
        )
        if allowance:
            cost += allowance
            figures.update(input_token_allowance_micro=allowance)
    if priced.minimum and cost < priced.minimum:
        cost = priced.minimum
        figures.update(minimum_micro=priced.minimum, minimum_applied=True)
    chosen = priced.chosen
    if chosen is None:
        figures.setdefault("rule", "none")
    else:
        figures.update(price_id=chosen.pk, model_pattern=chosen.model_pattern)
    if worst_case:
        figures["worst_case"] = True
    return Quote(cost, figures)


@dataclass(frozen=True)
class _Priced:
    """A quote's part that depends only on the price rows and what is asked (not on the
    prompt's length): its table remembers it (`_PriceTable.priced`)."""

    cost_micro: int  # before the input-token allowance and the minimum
    figures: Mapping[str, Any]  # read-only, of plain values: each quote copies it
    chosen: Price | None
    token_row: Price | None  # the row pricing tokens, if any
    minimum: int


def _priced(
    candidates: tuple[Price, ...],
    images: int,
    size: str | None,
    quality: str | None,
    tier: str | None,
    input_images: int,
    usage: Mapping[str, Any] | None,
    largest: str | None,
    worst_case: bool,
) -> _Priced:
    quality = None if quality in (None, "auto") else quality
    tier = None if tier in (None, "auto") else tier
    size = size if pixels(size) else None
    read_at = size or (largest if pixels(largest) else None)
    if tier is None and read_at is not None:  # a size says its tier
        tier = _nearest_tier(read_at, {p.tier for p in candidates if p.tier})
    exact = _Ask(size, quality, tier)
    # The estimate, and a settle that does not know what was made, price every variant the
    # upstream could make of an open or unnamed value, at the dearest.
    opened = _Ask(
        _open(size, {p.size for p in candidates if p.size}),
        _open(quality, {p.quality for p in candidates if p.quality}),
        _open(tier, {p.tier for p in candidates if p.tier}),
    )
    per_image = [p for p in candidates if _priced_per_image(p)]
    dearest = worst_case or size is None or not any(_matches(p, exact) for p in per_image)
    ask = opened if dearest else exact
    matching = [p for p in candidates if _matches(p, ask)] or candidates
    figures: dict[str, Any] = {
        "images": images,
        "size": size or "",
        "quality": quality or "",
        "tier": tier or "",
    }
    if size is None and read_at is not None:
        figures["priced_at_size"] = read_at
    chosen = _token_row(candidates, usage) if usage and not worst_case else None
    if chosen is not None and usage:
        cost, tokens = _token_cost(chosen, usage) or (0, {})
        figures.update(
            rule="per_token",
            tokens=tokens,
            text_input_per_mtok_micro=chosen.text_input_per_mtok_micro,
            image_input_per_mtok_micro=chosen.image_input_per_mtok_micro,
            image_output_per_mtok_micro=chosen.image_output_per_mtok_micro,
        )
        surcharge = chosen.per_input_image_micro or 0  # input tokens are priced already
    else:
        rows = _narrowed([p for p in matching if _priced_per_image(p)], ask)
        priced = [(_image_price(p, read_at, worst_case=worst_case), p) for p in rows]
        cost = 0
        if priced:
            (unit, unit_figures), chosen = max(priced, key=lambda pair: pair[0][0])
            cost = unit * images
            figures.update(unit_figures, unit_micro=unit)
        surcharge = _extra(chosen, matching, "per_input_image_micro")
    if input_images and surcharge:
        cost += input_images * surcharge
        figures.update(input_images=input_images, per_input_image_micro=surcharge)
    return _Priced(
        cost,
        MappingProxyType(figures),
        chosen,
        next((p for p in candidates if p.token_priced), None),
        _extra(chosen, matching, "minimum_micro"),
    )


def _token_row(candidates: Sequence[Price], usage: Mapping[str, Any]) -> Price | None:
    """The token-priced row, when the upstream's usage says what its tokens were."""
    row = next((p for p in candidates if p.token_priced), None)
    return row if row is not None and _token_cost(row, usage) is not None else None


def _extra(chosen: Price | None, matching: Sequence[Price], name: str) -> int:
    """A surcharge or minimum: the chosen row's, else the most any matching row sets."""
    own = getattr(chosen, name) if chosen is not None else None
    if own is not None:
        return int(own)
    return max((int(getattr(p, name)) for p in matching if getattr(p, name) is not None), default=0)


# --- the rule's older entry points, for callers that price images only ---------------------


def per_image_estimate(provider: str, model: str, size: str | None, quality: str | None) -> int:
    """The most one image may cost: the dearest per-image price the request could hit."""
    return quote(provider, model, images=1, size=size, quality=quality, worst_case=True).cost_micro


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
    return quote(provider, model, images=images, size=size, quality=quality, usage=usage).cost_micro
