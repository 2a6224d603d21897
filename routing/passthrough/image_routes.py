"""Image routes the gateway knows on passthrough, and what a call on one asks for.

Passthrough forwards bytes untouched, but where a provider's native path is an image route
(OpenAI's and Azure's /images/*, Gemini's generateContent) the request's fields say what the
call may cost: the model, how many images, their size and quality. They are read from the
whole body (JSON, or a multipart form's text fields), whatever its padding or transfer
encoding, before anything goes upstream. A count the body does not state plainly is held at
the most a request may ask for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aperture.errors import InvalidRequest
from routing.providers.base import ImageRoute
from routing.providers.capabilities import MAX_N
from routing.providers.registry import passthrough_image_route, uncounted_image_path


def _as_read_upstream(path: str) -> str:
    """Repeated and trailing slashes, which servers commonly ignore, do not hide a route."""
    return re.sub(r"/{2,}", "/", path).rstrip("/")


def recognise(provider: str, method: str, path: str) -> ImageRoute | None:
    """The image route this call is on, as its provider declares them."""
    return passthrough_image_route(provider, method, _as_read_upstream(path))


# Methods that ask an upstream to do (paid) work; reads and deletes cost nothing to relay.
_WORK = frozenset({"POST", "PUT", "PATCH"})


def refuse_unpriced(provider: str, method: str, path: str, *, free: bool) -> None:
    """Only the native image routes the gateway counts are served for money: any other call
    that asks the upstream to work (a route whose images cannot be counted, a chat or video
    API, a path spelled so no route is recognised) is relayed only by a credential an
    operator marked free. Otherwise what it costs the operator would cost its caller nothing."""
    if free or method not in _WORK:
        return
    known = uncounted_image_path(provider, method, _as_read_upstream(path))
    what = "makes images the gateway cannot count" if known else "is not a priced image route"
    raise InvalidRequest(
        f"{provider}'s {method} {path} {what}, so it is not relayed; an operator may mark the "
        "credential free.",
        code="route_not_priced",
    )


@dataclass(frozen=True)
class RequestFacts:
    """What the caller asked for, as far as its body says."""

    model: str
    n: int = 1
    size: str | None = None  # None: any size the model makes (priced at the dearest)
    quality: str | None = None


def _count(value: Any, param: str = "n") -> int:
    """`n` as the caller sent it; absent is 1 (every API's default), anything unreadable is
    the most a request may ask for, so the hold covers whatever the upstream makes of it.
    More than any API makes is a 400 (and no arithmetic on absurd holds)."""
    if value is None:
        return 1
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return MAX_N
    if value > MAX_N:
        raise InvalidRequest(f"'{param}' must be at most {MAX_N}.", param=param)
    return value


# Google's JSON parser takes a field in camelCase or snake_case alike.
_GEMINI_CONFIG = ("generationConfig", "generation_config")
_GEMINI_COUNT = ("candidateCount", "candidate_count")


def _gemini_count(fields: Mapping[str, Any]) -> int:
    """generationConfig.candidateCount in any spelling; two spellings, or a config that is
    not an object, are unclear and held at the most."""
    configs = [fields[name] for name in _GEMINI_CONFIG if name in fields]
    if not configs:
        return 1
    if len(configs) > 1 or not isinstance(configs[0], dict):
        return MAX_N
    counts = [configs[0][name] for name in _GEMINI_COUNT if name in configs[0]]
    if len(counts) > 1:
        return MAX_N
    return _count(counts[0] if counts else None, "candidateCount")


def request_facts(route: ImageRoute, fields: Mapping[str, Any]) -> RequestFacts:
    """From a JSON body or a multipart form's text fields."""
    if route.family == "gemini":
        return RequestFacts(model=route.path_model or "", n=_gemini_count(fields))
    model = route.path_model or fields.get("model")
    if not isinstance(model, str) or not model:
        # The upstream's default model changes over time (docs/providers.md, updates of
        # 2026-12-02: dall-e-2, once the default, is retired), so it cannot be priced.
        raise InvalidRequest(
            "An image call through passthrough must name its model.",
            param="model",
            code="model_required",
        )
    size, quality = fields.get("size"), fields.get("quality")
    return RequestFacts(
        model=model,
        n=_count(fields.get("n")),
        size=size if isinstance(size, str) and size != "auto" else None,
        quality=quality if isinstance(quality, str) and quality != "auto" else None,
    )


def _gemini_texts(value: Any) -> list[str]:
    """Every `text` of a Gemini content (or list of them): parts in any nesting Google reads."""
    if isinstance(value, list):
        return [text for item in value for text in _gemini_texts(item)]
    if not isinstance(value, dict):
        return [value] if isinstance(value, str) else []
    texts = [value["text"]] if isinstance(value.get("text"), str) else []
    return texts + _gemini_texts(value.get("parts"))


def prompt_of(route: ImageRoute, fields: Mapping[str, Any]) -> str:
    """The prompt the guardrails read: OpenAI's `prompt`, or every text part of Gemini's
    contents and system instruction."""
    if route.family == "gemini":
        texts = _gemini_texts(fields.get("contents"))
        for name in ("systemInstruction", "system_instruction"):
            texts += _gemini_texts(fields.get(name))
        return "\n".join(texts)
    prompt = fields.get("prompt")
    return prompt if isinstance(prompt, str) else ""
