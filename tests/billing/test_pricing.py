import logging
from typing import Any

import pytest

from billing import pricing
from billing.models import Price

GPT_USAGE = {
    "input_tokens": 50,
    "output_tokens": 4160,
    "total_tokens": 4210,
    "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
}


@pytest.mark.django_db
def test_token_usage_is_priced_to_the_micro_dollar() -> None:
    # Seeded gpt-image-1 rates: $5/M text in, $10/M image in, $40/M image out.
    cost = pricing.actual_cost(
        "openai", "gpt-image-1", images=1, size="1024x1024", quality="high", usage=GPT_USAGE
    )
    assert cost == 10 * 5 + 40 * 10 + 4160 * 40  # = 166,850 µUSD


@pytest.mark.django_db
def test_token_costs_round_up_to_the_next_micro_dollar() -> None:
    Price.objects.create(provider="openai", model_pattern="tiny", image_output_per_mtok_micro=3)
    usage = {"output_tokens": 1, "input_tokens": 0}
    assert (
        pricing.actual_cost("openai", "tiny", images=1, size=None, quality=None, usage=usage) == 1
    )


@pytest.mark.django_db
def test_per_image_prices_by_size_and_quality_and_the_estimate_takes_the_dearest() -> None:
    def cost(size: str, quality: str) -> int:
        return pricing.actual_cost(
            "openai", "dall-e-3", images=2, size=size, quality=quality, usage=None
        )

    assert cost("1024x1024", "standard") == 80_000
    assert cost("1792x1024", "hd") == 240_000
    assert pricing.per_image_estimate("openai", "dall-e-3", "1792x1024", None) == 120_000
    assert pricing.per_image_estimate("openai", "gpt-image-1", "auto", "auto") == 250_000
    assert pricing.per_image_estimate("openai", "gpt-image-1", "1024x1024", "low") == 11_000


@pytest.mark.django_db
def test_an_exact_model_beats_a_prefix_and_a_longer_prefix_beats_a_shorter() -> None:
    Price.objects.create(provider="xai", model_pattern="grok*", per_image_micro=1)
    Price.objects.create(provider="xai", model_pattern="grok-x*", per_image_micro=2)
    Price.objects.create(provider="xai", model_pattern="grok-x-1", per_image_micro=3)
    assert pricing.per_image_estimate("xai", "grok-y", None, None) == 1
    assert pricing.per_image_estimate("xai", "grok-x-2", None, None) == 2
    assert pricing.per_image_estimate("xai", "grok-x-1", None, None) == 3


@pytest.mark.django_db
def test_a_missing_price_costs_zero_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="billing.pricing"):
        for _ in range(3):
            assert pricing.per_image_estimate("openai", "never-priced-model", None, None) == 0
    warnings = [r for r in caplog.records if "never-priced-model" in r.getMessage()]
    assert len(warnings) == 1
    assert not pricing.has_price("openai", "never-priced-model")


@pytest.mark.django_db
def test_a_models_rows_are_found_once_and_found_afresh_when_a_price_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Price.objects.create(provider="xai", model_pattern="grok*", per_image_micro=1)
    assert pricing.per_image_estimate("xai", "grok-y", None, None) == 1
    scored: list[str] = []
    score = pricing._model_score

    def counted(pattern: str, model: str) -> int:
        scored.append(model)
        return score(pattern, model)

    monkeypatch.setattr(pricing, "_model_score", counted)
    assert pricing.per_image_estimate("xai", "grok-y", None, None) == 1
    assert pricing.has_price("xai", "grok-y")
    assert scored == []  # no price changed: the rows found the first time

    Price.objects.create(provider="xai", model_pattern="grok-y", per_image_micro=7)
    assert pricing.per_image_estimate("xai", "grok-y", None, None) == 7
    assert "grok-y" in scored


@pytest.mark.django_db
def test_a_provider_remembers_a_bounded_number_of_priced_models_of_bounded_length() -> None:
    Price.objects.create(provider="xai", model_pattern="grok*", per_image_micro=1)
    for n in range(pricing._REMEMBERED_MODELS * 3):  # e.g. passthrough bodies naming models
        assert pricing.has_price("xai", f"grok-{n}")
    assert 0 < len(pricing._table("xai").by_model) <= pricing._REMEMBERED_MODELS

    huge = "grok-" + "x" * 4_000_000  # priced by the pattern, and 4 MB long
    unpriced = "never-priced-model"
    assert pricing.has_price("xai", huge)
    assert not pricing.has_price("xai", unpriced)
    assert huge not in pricing._table("xai").by_model
    assert unpriced not in pricing._table("xai").by_model


@pytest.mark.django_db
def test_a_remembered_ask_is_priced_as_a_fresh_one_for_any_prompt_and_shares_nothing() -> None:
    # gpt-image-1: per-image rows, and $5/M text tokens in (the estimate's allowance).
    def estimate(prompt_bytes: int, input_images: int = 0) -> pricing.Quote:
        return pricing.quote(
            "openai",
            "gpt-image-1",
            images=1,
            size="1024x1024",
            quality="low",
            worst_case=True,
            prompt_bytes=prompt_bytes,
            input_images=input_images,
        )

    first = estimate(prompt_bytes=0)
    assert len(pricing._table("openai").by_ask) == 1
    longer = estimate(prompt_bytes=200_000)  # the same ask, remembered: the prompt still counts
    assert len(pricing._table("openai").by_ask) == 1
    assert longer.cost_micro == first.cost_micro + 200_000 * 5
    assert longer.snapshot["input_token_allowance_micro"] == 200_000 * 5
    assert "input_token_allowance_micro" not in first.snapshot
    assert estimate(prompt_bytes=0, input_images=1).cost_micro > first.cost_micro  # another ask

    first.snapshot["unit_micro"] = -1  # a caller's copy: the next quote is not changed
    remembered = estimate(prompt_bytes=0)
    assert remembered.snapshot["unit_micro"] != -1
    pricing._table("openai").by_ask.clear()
    assert estimate(prompt_bytes=0) == remembered  # as priced afresh


@pytest.mark.django_db
def test_a_provider_remembers_a_bounded_number_of_asks_of_bounded_length() -> None:
    for n in range(pricing._REMEMBERED_ASKS * 2):  # e.g. passthrough bodies asking anything
        pricing.quote("openai", "gpt-image-1", images=1, quality=f"q{n}")
    assert 0 < len(pricing._table("openai").by_ask) <= pricing._REMEMBERED_ASKS

    huge = "x" * 4_000_000
    pricing.quote("openai", "gpt-image-1", images=1, size=huge, quality="low")
    assert all(huge not in ask for ask in pricing._table("openai").by_ask)

    asked: dict[str, Any] = {"images": 1, "quality": "q0", "size": "1024x1024"}
    assert pricing.quote("openai", "gpt-image-1", **asked).cost_micro != 123  # remembered
    Price.objects.create(
        provider="openai",
        model_pattern="gpt-image-1",
        size="1024x1024",
        quality="q0",
        per_image_micro=123,
    )
    assert pricing.quote("openai", "gpt-image-1", **asked).cost_micro == 123  # forgotten
