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
from aperture.db import waiting_on_network
from aperture.errors import ContentPolicyViolation, GuardrailUnavailable, InvalidRequest
from billing.metering import Meter
from routing.guardrails import matching
from routing.guardrails.policies import ActivePolicy, Moderation, compile_policy, policies_for
from routing.images import conversion
from routing.models import GuardrailPolicy
from routing.providers import moderation
from routing.providers.base import (
    GeneratedImage,
    ProviderError,
    UpstreamModerated,
    UpstreamRejected,
)
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


_REJECTED = moderation.Scores(flagged=True, categories={}, rejected=True)


def _scores(spec: Moderation, content: list[dict[str, object]]) -> moderation.Scores:
    """The endpoint's scores; an input it refuses (a 4xx other than auth and rate limits)
    counts as flagged — a caller must not open a fail-open policy by sending what the
    endpoint will not read. Anything else that gives no verdict is _Unavailable."""
    if not spec.available:
        raise _Unavailable("the policy's credential is disabled")
    try:
        return moderation.moderate(spec.target, content)
    except (UpstreamRejected, UpstreamModerated):
        return _REJECTED
    except ProviderError as error:
        raise _Unavailable(error.message) from None


def _matched(spec: Moderation, scores: moderation.Scores) -> list[str]:
    """The categories that match; no verdict if a threshold's category is not scored."""
    if spec.thresholds and not scores.rejected:
        missing = sorted(set(spec.thresholds) - set(scores.categories))
        if missing:
            raise _Unavailable(f"the answer scores no '{missing[0]}'")
    return scores.matches(spec.thresholds)


def _concurrently(calls: Sequence[Callable[[], T]]) -> list[T | _Unavailable]:
    """Each call's result or its _Unavailable, in order; at once when there are several."""

    def run(call: Callable[[], T]) -> T | _Unavailable:
        try:
            return call()
        except _Unavailable as error:
            return error

    with waiting_on_network():  # nothing below needs the database, nor holds it while waiting
        if len(calls) <= 1:
            return [run(call) for call in calls]
        with ThreadPoolExecutor(max_workers=min(len(calls), 8)) as pool:
            return list(pool.map(run, calls))


def _prompt_verdict(spec: Moderation, text: str) -> list[str]:
    key = _cache_key(spec, text)
    cached = safe_cache.get(key)
    if isinstance(cached, dict):
        scores = moderation.Scores(
            flagged=bool(cached["flagged"]),
            categories=cached["scores"],
            rejected=bool(cached.get("rejected")),
        )
    else:
        scores = _scores(spec, moderation.text_input(text))
        safe_cache.set(
            key,
            {"flagged": scores.flagged, "scores": scores.categories, "rejected": scores.rejected},
            settings.GUARDRAIL_MODERATION_CACHE_SECONDS,
        )
    return _matched(spec, scores)


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
        [lambda spec=p.moderation: _prompt_verdict(spec, text) for p in asked]  # type: ignore[misc]
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
        if answer:
            hits.append(Hit(policy, ",".join(answer)))
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


def refuse_unscreenable(policies: list[ActivePolicy], *, stream: bool) -> None:
    """Images relayed as they are made (a stream) or untouched (passthrough) cannot be
    withheld: under an output policy such a request is refused before anything is held."""
    if not policies:
        return
    name = policies[0].name
    if stream:
        raise InvalidRequest(
            f"The content policy '{name}' checks generated images before they are returned, "
            "so this request cannot be streamed; send it without `stream`.",
            param="stream",
            code="stream_not_moderated",
        )
    raise InvalidRequest(
        f"The content policy '{name}' checks generated images before they are returned, and "
        "passthrough answers are relayed untouched; use /v1/images instead.",
        code="passthrough_not_moderated",
    )


@dataclass(frozen=True)
class Screened:
    kept: list[int]  # indexes of the images that may be returned
    charged: int  # how many of the images are paid for
    refused_by: Hit | None  # the policy that refuses the whole request, if one does
    unavailable: ActivePolicy | None  # a fail-closed policy that gave no verdict


def _data_url(image: bytes) -> str:
    media_type = f"image/{conversion.sniff_format(image[:64]) or 'png'}"
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"


def _image_verdict(spec: Moderation, url: str) -> list[str]:
    return _matched(spec, _scores(spec, moderation.image_input(url)))


def _verdicts(
    meter: Meter, policies: list[ActivePolicy], images: list[bytes]
) -> tuple[dict[int, list[Hit]], ActivePolicy | None]:
    """Each image checked by each policy at once: the blocking hits by image, and a
    fail-closed policy that gave no verdict, if any."""
    pairs = [(p, i) for p in policies for i in range(len(images))]
    urls = [_data_url(image) for image in images]
    answers = _concurrently(
        [
            lambda spec=p.moderation, url=urls[i]: _image_verdict(spec, url)  # type: ignore[misc]
            for p, i in pairs
        ]
    )
    withheld: dict[int, list[Hit]] = {}
    closed: ActivePolicy | None = None
    for (policy, index), answer in zip(pairs, answers, strict=True):
        spec = policy.moderation
        assert spec is not None
        if isinstance(answer, _Unavailable):
            logger.warning("guardrail %s: output moderation unavailable: %s", policy.name, answer)
            if not any(n["policy"] == policy.name for n in meter.guardrails):
                meter.guardrails.append(policy.note("unavailable", "output"))
            if not spec.fail_open:
                closed = closed or policy
            continue
        if not answer:
            continue
        if policy.action == FLAG:
            meter.guardrails.append(policy.note("flag", "output", ",".join(answer)))
        else:
            withheld.setdefault(index, []).append(Hit(policy, ",".join(answer)))
    return withheld, closed


def _unpaid(hits: list[Hit]) -> bool:
    return any(h.policy.moderation and not h.policy.moderation.charge_withheld for h in hits)


def check_output(*, meter: Meter, policies: list[ActivePolicy], images: list[bytes]) -> Screened:
    """Which generated images may be returned. An image a blocking policy flags is
    withheld (and, unless a withholding policy says otherwise, still paid for: the provider
    charged for it). With nothing left, or withheld under a policy that does not allow
    partial results, the whole request is refused, and every image is withheld: then none
    is paid for if the refusing policy says so. A fail-closed policy that could not check
    the images withholds them all (503)."""
    withheld, closed = _verdicts(meter, policies, images)
    for hits in withheld.values():
        meter.guardrails.append(hits[0].policy.note("withhold", "output", hits[0].matched))
    kept = [i for i in range(len(images)) if i not in withheld]
    hits = [h for image_hits in withheld.values() for h in image_hits]
    strict = [h for h in hits if h.policy.moderation and not h.policy.moderation.allow_partial]
    refused_by = (strict or hits)[0] if hits and (strict or not kept) else None
    if refused_by is not None or closed is not None:
        refusing = [refused_by] if refused_by is not None else []
        unpaid_all = _unpaid(refusing) or bool(
            closed and closed.moderation and not closed.moderation.charge_withheld
        )
        charged = 0 if unpaid_all else len(images) - sum(map(_unpaid, withheld.values()))
        return Screened(kept=[], charged=charged, refused_by=refused_by, unavailable=closed)
    unpaid = sum(1 for image_hits in withheld.values() if _unpaid(image_hits))
    return Screened(kept=kept, charged=len(images) - unpaid, refused_by=None, unavailable=None)


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
    """After settling: the refusal of the whole request, if the screening ended in one."""
    if screened.refused_by is not None:
        _refuse(principal, meter, screened.refused_by, on="output")
    if screened.unavailable is not None:
        meter.error_code = "guardrail_unavailable"
        raise GuardrailUnavailable(
            f"The content policy '{screened.unavailable.name}' could not check the generated "
            "images; try again shortly.",
            headers={"Retry-After": "5"},
        )


# --- the admin's and the API's "test this policy" ---------------------------------------------


@dataclass(frozen=True)
class Trial:
    matched: bool
    action: str  # "block", "flag", "pass" or "unavailable"
    detail: str


def try_policy(policy: GuardrailPolicy, prompt: str) -> Trial:
    """What `policy` would do with `prompt`, as saved (moderation calls the endpoint)."""
    active = compile_policy(policy)
    if active.find is not None:
        matched = active.find(matching.Prompt(prompt))
    elif active.moderation is not None and active.moderation.on_prompt:
        try:
            spec = active.moderation
            matched = ",".join(_matched(spec, _scores(spec, moderation.text_input(prompt))))
        except _Unavailable as error:
            outcome = "refused (fail closed)" if not active.moderation.fail_open else "served"
            detail = f"No verdict ({error}): the request would be {outcome}."
            return Trial(False, "unavailable", detail)
    else:
        return Trial(False, "pass", "This policy checks generated images only, not prompts.")
    if not matched:
        return Trial(False, "pass", "No match: the request would be served.")
    verb = "refused (400 content_policy_violation)" if active.action == BLOCK else "served, flagged"
    return Trial(True, active.action, f"Matched ({matched}): the request would be {verb}.")
