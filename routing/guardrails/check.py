"""The guardrail step of the request path: a prompt is checked after the estimate and before
anything is admitted (routing/pipeline.py), and with an output moderation policy the
generated images are checked before they are returned.

Local checks (keywords, regex, PII) run first; when one of them blocks, no moderation call
is made. Moderation calls of a request run concurrently, with no database connection held,
and a prompt's scores are cached for a short time by hash. A block is a 400
`content_policy_violation` naming the policy, with no upstream call and no charge; the usage
record (`error_code: "guardrail"`) and the audit trail name the policy. A flag is served and
noted on the usage record.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings

from aperture import safe_cache
from aperture.db import release_connection
from aperture.errors import ContentPolicyViolation, GuardrailUnavailable, InvalidRequest
from billing.metering import Meter
from routing.guardrails import matching
from routing.guardrails.policies import ActivePolicy, Moderation, compile_policy, policies_for
from routing.images import conversion
from routing.models import GuardrailPolicy
from routing.providers import moderation
from routing.providers.base import GeneratedImage, ProviderError
from routing.providers.fetch import fetch_image
from tenants.audit import audit_record
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK, FLAG = GuardrailPolicy.Action.BLOCK, GuardrailPolicy.Action.FLAG


@dataclass(frozen=True)
class Hit:
    policy: ActivePolicy
    matched: str  # a detector or category name, "keyword", "pattern" or "flagged"


class _Unavailable(Exception):
    """A moderation call that gave no verdict."""


# --- moderation calls --------------------------------------------------------------------


def _cache_key(spec: Moderation, text: str) -> str:
    digest = hashlib.sha256(
        f"{spec.target.credential_name}\0{spec.target.base_url}\0{spec.target.upstream_model}"
        f"\0{text}".encode()
    ).hexdigest()
    return f"guardrail:moderation:{digest}"


def _scores(spec: Moderation, content: list[dict[str, object]]) -> moderation.Scores:
    try:
        return moderation.moderate(spec.target, content)
    except ProviderError as error:
        raise _Unavailable(error.message) from None


def _concurrently(calls: Sequence[Callable[[], T]]) -> list[T | _Unavailable]:
    """Each call's result or its _Unavailable, in order; at once when there are several."""

    def run(call: Callable[[], T]) -> T | _Unavailable:
        try:
            return call()
        except _Unavailable as error:
            return error

    if len(calls) <= 1:
        return [run(call) for call in calls]
    release_connection()  # nothing below needs the database
    with ThreadPoolExecutor(max_workers=min(len(calls), 8)) as pool:
        return list(pool.map(run, calls))


def _prompt_scores(spec: Moderation, text: str) -> moderation.Scores:
    key = _cache_key(spec, text)
    cached = safe_cache.get(key)
    if isinstance(cached, dict):
        return moderation.Scores(flagged=bool(cached["flagged"]), categories=cached["scores"])
    scores = _scores(spec, moderation.text_input(text))
    safe_cache.set(
        key,
        {"flagged": scores.flagged, "scores": scores.categories},
        settings.GUARDRAIL_MODERATION_CACHE_SECONDS,
    )
    return scores


# --- the prompt --------------------------------------------------------------------------


def _applicable(principal: KeyPrincipal, route: str) -> list[ActivePolicy]:
    return [p for p in policies_for(principal.workspace_id) if p.applies(route)]


def _local_hits(policies: list[ActivePolicy], prompt: matching.Prompt) -> list[Hit]:
    hits = []
    for policy in policies:
        if policy.find is not None and (matched := policy.find(prompt)):
            hits.append(Hit(policy, matched))
    return hits


def _moderation_hits(
    policies: list[ActivePolicy], text: str, meter: Meter
) -> tuple[list[Hit], list[ActivePolicy]]:
    """The hits of the prompt's moderation policies, and those that gave no verdict and
    fail closed."""
    asked = [p for p in policies if p.moderation is not None and p.moderation.on_prompt]
    if not asked or not text:
        return [], []
    answers = _concurrently(
        [lambda spec=p.moderation: _prompt_scores(spec, text) for p in asked]  # type: ignore[misc]
    )
    hits, closed = [], []
    for policy, answer in zip(asked, answers, strict=True):
        assert policy.moderation is not None
        if isinstance(answer, _Unavailable):
            logger.warning("guardrail %s: moderation unavailable: %s", policy.name, answer)
            meter.guardrails.append(policy.note("unavailable", "prompt"))
            if not policy.moderation.fail_open:
                closed.append(policy)
            continue
        categories = answer.matches(policy.moderation.thresholds)
        if categories:
            hits.append(Hit(policy, ",".join(categories)))
    return hits, closed


def check_prompt(*, principal: KeyPrincipal, meter: Meter, route: str, prompt: str | None) -> None:
    """Refuse a prompt a blocking policy matches (400, or 503 for a fail-closed moderation
    policy without a verdict); note the flagging ones on the meter."""
    policies = _applicable(principal, route)
    if not policies:
        return
    text = prompt or ""
    hits = _local_hits(policies, matching.Prompt(text))
    closed: list[ActivePolicy] = []
    if not any(h.policy.action == BLOCK for h in hits):
        more, closed = _moderation_hits(policies, text, meter)
        hits += more
    blocking = next((h for h in hits if h.policy.action == BLOCK), None)
    for hit in hits:
        action = "block" if hit is blocking else "flag"
        if hit.policy.action == FLAG or hit is blocking:
            meter.guardrails.append(hit.policy.note(action, "prompt", hit.matched))
    if blocking is not None:
        _refuse(principal, meter, blocking, on="prompt")
    if closed:
        meter.error_code = "guardrail_unavailable"
        raise GuardrailUnavailable(
            f"The content policy '{closed[0].name}' could not check the request; try again "
            "shortly.",
            headers={"Retry-After": "5"},
        )


def _refuse(principal: KeyPrincipal, meter: Meter, hit: Hit, *, on: str) -> None:
    meter.error_code = "guardrail"
    audit_record(
        actor=f"key:{principal.public_id}",
        event="guardrail.blocked",
        target=("routing.guardrailpolicy", hit.policy.public_id),
        workspace_id=principal.workspace_id,
        data={"request_id": meter.request_id, **hit.policy.note("block", on, hit.matched)},
    )
    what = "prompt" if on == "prompt" else "generated image"
    raise ContentPolicyViolation(
        f"The {what} was refused by the content policy '{hit.policy.name}'.",
        param="prompt",
    )


# --- the output --------------------------------------------------------------------------


def output_policies(principal: KeyPrincipal, route: str) -> list[ActivePolicy]:
    """The moderation policies that check this route's generated images."""
    return [
        p
        for p in _applicable(principal, route)
        if p.moderation is not None and p.moderation.on_output
    ]


def refuse_stream(policies: list[ActivePolicy]) -> None:
    """Images relayed as they are made cannot be withheld: a stream under an output policy
    is refused before anything is admitted."""
    if policies:
        raise InvalidRequest(
            f"The content policy '{policies[0].name}' checks generated images before they are "
            "returned, so this request cannot be streamed; send it without `stream`.",
            param="stream",
            code="stream_not_moderated",
        )


@dataclass(frozen=True)
class Screened:
    kept: list[int]  # indexes of the images that may be returned
    charged: int  # how many of the images are paid for
    refused_by: Hit | None  # the policy that refuses the whole request, if one does


def _data_url(image: bytes) -> str:
    media_type = f"image/{conversion.sniff_format(image[:64]) or 'png'}"
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"


def _verdicts(
    meter: Meter, policies: list[ActivePolicy], images: list[bytes]
) -> dict[int, list[Hit]]:
    """Each image checked by each policy at once; the blocking hits by image."""
    pairs = [(p, i) for p in policies for i in range(len(images))]
    urls = [_data_url(image) for image in images]
    answers = _concurrently(
        [
            lambda spec=p.moderation, url=urls[i]: _scores(spec, moderation.image_input(url))  # type: ignore[misc]
            for p, i in pairs
        ]
    )
    withheld: dict[int, list[Hit]] = {}
    for (policy, index), answer in zip(pairs, answers, strict=True):
        spec = policy.moderation
        assert spec is not None
        if isinstance(answer, _Unavailable):
            meter.guardrails.append(policy.note("unavailable", "output"))
            if not spec.fail_open:
                withheld.setdefault(index, []).append(Hit(policy, "unavailable"))
            continue
        categories = answer.matches(spec.thresholds)
        if not categories:
            continue
        if policy.action == FLAG:
            meter.guardrails.append(policy.note("flag", "output", ",".join(categories)))
        else:
            withheld.setdefault(index, []).append(Hit(policy, ",".join(categories)))
    return withheld


def check_output(*, meter: Meter, policies: list[ActivePolicy], images: list[bytes]) -> Screened:
    """Which generated images may be returned. An image a blocking policy flags is
    withheld (and, unless a withholding policy says otherwise, still paid for: the provider
    charged for it). With nothing left, or withheld under a policy that does not allow
    partial results, the whole request is refused."""
    withheld = _verdicts(meter, policies, images)
    unpaid = 0
    for hits in withheld.values():
        first = hits[0]
        meter.guardrails.append(first.policy.note("withhold", "output", first.matched))
        if any(h.policy.moderation and not h.policy.moderation.charge_withheld for h in hits):
            unpaid += 1
    kept = [i for i in range(len(images)) if i not in withheld]
    hits = [h for image_hits in withheld.values() for h in image_hits]
    strict = [h for h in hits if h.policy.moderation and not h.policy.moderation.allow_partial]
    refused_by = (strict or hits)[0] if hits and (strict or not kept) else None
    return Screened(kept=kept, charged=len(images) - unpaid, refused_by=refused_by)


def screen_images(
    *, meter: Meter, policies: list[ActivePolicy], images: list[GeneratedImage], provider: str
) -> tuple[list[GeneratedImage], Screened]:
    """The images that may be returned, as bytes (an upstream-hosted one is fetched to be
    checked, then hosted by the gateway), and the screening's outcome."""
    contents = []
    for image in images:
        data = image.content()
        if data is None and image.url is not None:
            data, _media_type = fetch_image(provider, image.url)
        contents.append(data or b"")
    screened = check_output(meter=meter, policies=policies, images=contents)
    kept = [
        GeneratedImage(data=contents[i], revised_prompt=images[i].revised_prompt)
        for i in screened.kept
    ]
    return kept, screened


def refuse_output(principal: KeyPrincipal, meter: Meter, screened: Screened) -> None:
    if screened.refused_by is not None:
        _refuse(principal, meter, screened.refused_by, on="output")


# --- the admin's and the API's "test this policy" ---------------------------------------------


@dataclass(frozen=True)
class Trial:
    matched: bool
    action: str  # "block", "flag", "pass" or "unavailable"
    detail: str


def try_policy(policy: GuardrailPolicy, prompt: str) -> Trial:
    """What `policy` would do with `prompt`, as saved (moderation calls the endpoint)."""
    if policy.credential is not None and not policy.credential.enabled:
        return Trial(False, "pass", "Its credential is disabled, so the policy is not applied.")
    active = compile_policy(policy)
    if active.find is not None:
        matched = active.find(matching.Prompt(prompt))
    elif active.moderation is not None and active.moderation.on_prompt:
        try:
            scores = _scores(active.moderation, moderation.text_input(prompt))
        except _Unavailable as error:
            outcome = "refused (fail closed)" if not active.moderation.fail_open else "served"
            return Trial(
                False, "unavailable", f"The moderation endpoint failed ({error}): {outcome}."
            )
        matched = ",".join(scores.matches(active.moderation.thresholds)) or None
    else:
        return Trial(False, "pass", "This policy checks generated images only, not prompts.")
    if not matched:
        return Trial(False, "pass", "No match: the request would be served.")
    verb = "refused (400 content_policy_violation)" if active.action == BLOCK else "served, flagged"
    return Trial(True, active.action, f"Matched ({matched}): the request would be {verb}.")
