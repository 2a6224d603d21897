"""The router: an alias resolved to the deployments that can serve a request, in the order
they are tried, and the call itself with its bounded retry policy.

A deployment that cannot take the request (its capabilities refuse it, or its model has no
price and it is not marked free) is skipped when it is a fallback; when it is the first,
its refusal is the answer. The rest are ordered by the alias's strategy (priority, or
weighted at random by weight) among those whose circuit is not open (routing/health.py): a
half-open one goes first as its trial, and when every circuit is open the one whose
cooldown ends first is still tried, so no request is refused without an upstream attempt.
At most `max_attempts` deployments are called, each once. Connect errors, 5xx and 429 move
on to the next; a read timeout after the request was sent moves on only if the alias allows
it (`retry_after_timeout`: the first provider may already have charged); a rejection of the
request itself (4xx, moderation) is the answer. A stream moves on only until its first byte.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from django.conf import settings

from aperture import config_cache
from aperture.errors import ApiError
from billing import pricing
from routing import health, selectors
from routing.images import fanout
from routing.images.edit_form import EditForm
from routing.images.references import load_references
from routing.images.sizing import largest_size
from routing.images.validation import parse_edit_request, parse_image_request
from routing.models import Deployment, ModelAlias
from routing.providers.auth import auth_for
from routing.providers.base import (
    EventSource,
    ImageRequest,
    ImageResult,
    ProviderError,
    Target,
    UpstreamAuthFailed,
    UpstreamCancelled,
    UpstreamModerated,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimedOut,
    UpstreamUnreachable,
)
from routing.providers.capabilities import ImageCapabilities
from routing.providers.errors import api_error_for
from routing.providers.registry import adapter_for
from routing.tally import Counted
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)
T = TypeVar("T")


class NoDeployment(ApiError):
    status = 503
    type = "service_unavailable"
    code = "no_deployment"


@dataclass(frozen=True)
class Attempt:
    deployment: Deployment
    request: ImageRequest
    target: Target
    retry_after_timeout: bool = False  # the alias's: move on after a read timeout
    circuit_closed: bool = True  # when ordered (a success on a closed circuit writes nothing)
    half_open: bool = False  # its cooldown is over: one request at a time may try it

    @property
    def free(self) -> bool:
        return self.deployment.free or self.deployment.credential.free

    def _caps(self) -> ImageCapabilities:
        return adapter_for(self.target.provider).capabilities(
            self.target.upstream_model, self.target.options
        )

    def _input_images(self, images: int, caps: ImageCapabilities) -> int:
        """Input or reference images the upstream bills: each upstream call is sent them
        all, and a model making fewer images per call than asked is called several times."""
        inputs = len(self.request.images) or len(self.request.references)
        return inputs * -(-images // max(caps.max_n, 1)) if inputs and images else 0

    def estimate(self) -> pricing.Quote:
        """The most this attempt may cost (at the provider's price): n images at the dearest
        price the request could hit; an open size at the largest the model makes."""
        if self.free:
            return pricing.Quote(0, {"rule": "free"})
        request, caps = self.request, self._caps()
        return pricing.quote(
            self.target.provider,
            self.target.upstream_model,
            images=request.n,
            size=None if request.size == "auto" else request.size,
            quality=request.quality,
            tier=request.resolution,
            input_images=self._input_images(request.n, caps),
            largest=largest_size(caps),
            worst_case=True,
            prompt_bytes=len(request.prompt.encode()) * len(fanout.split(request.n, caps.max_n)),
        )

    def estimate_micro(self) -> int:
        return self.estimate().cost_micro

    def quote_of(self, produced: Counted) -> pricing.Quote:
        """What the images this attempt produced cost (at the provider's price): their size
        and quality as the upstream said or they measure, else as asked."""
        if self.free:
            return pricing.Quote(0, {"rule": "free"})
        if not produced.images:
            return pricing.Quote(0, {})
        request, caps = self.request, self._caps()
        return pricing.quote(
            self.target.provider,
            self.target.upstream_model,
            images=produced.images,
            size=produced.size or (None if request.size == "auto" else request.size),
            quality=produced.quality or request.quality,
            tier=None if produced.size else request.resolution,
            input_images=self._input_images(produced.images, caps),
            usage=produced.usage,
            largest=largest_size(caps),
        )

    def cost_of(self, produced: Counted) -> int:
        return self.quote_of(produced).cost_micro


def target_for(deployment: Deployment) -> Target:
    credential = deployment.credential
    return Target(
        provider=credential.provider,
        credential_name=credential.name,
        base_url=(credential.base_url or auth_for(credential.provider).default_base_url),
        secret=credential.secret(),
        upstream_model=deployment.upstream_model,
        timeout_seconds=float(deployment.timeout_seconds),
        connect_timeout_seconds=float(deployment.connect_timeout_seconds),
        api_version=credential.api_version,
        extra_headers=dict(credential.extra_headers or {}),
        options={**(credential.options or {}), **(deployment.options or {})},
        guarded=credential.workspace_id is not None,
    )


@dataclass(frozen=True)
class Plan:
    """The alias's policy and every deployment able to serve the request, in priority order."""

    alias: ModelAlias
    attempts: list[Attempt]


def plan(
    principal: KeyPrincipal,
    body: dict[str, Any],
    alias_name: str,
    edit: EditForm | None = None,
) -> Plan:
    """Every deployment able to serve this body, in order; the first one's refusal wins."""
    alias = selectors.alias_resolve(principal, alias_name)
    routes = config_cache.cached(
        ("routes", alias.pk),
        lambda: [(d, target_for(d)) for d in selectors.deployments_for(alias)],
    )
    if not routes:
        raise NoDeployment(f"The model '{alias_name}' has no enabled deployment.", param="model")
    attempts = []
    for position, (deployment, target) in enumerate(routes):
        adapter = adapter_for(deployment.credential.provider)
        caps = adapter.capabilities(deployment.upstream_model, target.options)
        try:
            if edit is not None:
                request = parse_edit_request(edit, caps, alias_name)
            else:
                request = parse_image_request(body, caps, alias_name)
            attempt = Attempt(
                deployment=deployment,
                request=request,
                target=target,
                retry_after_timeout=alias.retry_after_timeout,
            )
            pricing.require_price(target.provider, target.upstream_model, free=attempt.free)
        except ApiError:
            if position == 0:
                raise
            continue  # a fallback that cannot take this request is skipped
        attempts.append(attempt)
    if not attempts:
        raise NoDeployment(f"No deployment of '{alias_name}' can serve this request.")
    return Plan(alias=alias, attempts=attempts)


def order(plan: Plan) -> list[Attempt]:
    """The attempts to make, in order, at most the alias's `max_attempts`."""
    attempts = plan.attempts
    now = time.time()
    found = health.states([a.deployment.pk for a in attempts])
    trials, ready, cooling = [], [], []
    for attempt in attempts:
        state = found[attempt.deployment.pk]
        status = state.status(now)
        if status == health.CLOSED:
            ready.append(attempt)
        elif status == health.HALF_OPEN:  # its trial's lease is taken when it is called
            trials.append(replace(attempt, circuit_closed=False, half_open=True))
        else:
            cooling.append((state.open_until, replace(attempt, circuit_closed=False)))
    if plan.alias.strategy == ModelAlias.Strategy.WEIGHTED:
        ready = _weighted(ready)
    chosen = trials + ready
    if not chosen:  # every circuit open: the one that cools down first is still tried
        chosen = [min(cooling, key=lambda pair: pair[0])[1]]
    return chosen[: max(plan.alias.max_attempts, 1)]


def _weighted(attempts: list[Attempt]) -> list[Attempt]:
    """A random order where each deployment leads in proportion to its weight
    (Efraimidis-Spirakis: sort by u^(1/w))."""
    keyed = [
        (random.random() ** (1 / max(a.deployment.weight, 1)), index, a)
        for index, a in enumerate(attempts)
    ]
    return [a for _, _, a in sorted(keyed, key=lambda k: (k[0], -k[1]), reverse=True)]


@dataclass
class Tried:
    """One upstream call of a request, as the usage record lists it."""

    number: int
    deployment_id: int | None  # None: a passthrough call (a credential, no deployment)
    provider: str
    outcome: str  # "ok", or the failure: "unreachable", "timeout", "rate_limited", ...
    ms: int

    def as_record(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "deployment": self.deployment_id,
            "provider": self.provider,
            "outcome": self.outcome,
            "ms": self.ms,
        }


def outcome_of(error: ProviderError) -> str:
    """How a failed upstream call is named on the usage record."""
    return _outcome(error)[0]


def _outcome(error: ProviderError) -> tuple[str, bool]:
    """How a failure is recorded, and whether it counts against the deployment's health
    (the upstream rejecting the request itself, or refusing it for safety, does not)."""
    if isinstance(error, UpstreamModerated):
        return "moderated", False
    if isinstance(error, UpstreamRejected):
        return "rejected", False
    if isinstance(error, UpstreamAuthFailed):
        return "auth_failed", True
    if isinstance(error, UpstreamRateLimited):
        return "rate_limited", True
    if isinstance(error, UpstreamTimedOut):
        return "timeout", True
    if isinstance(error, UpstreamCancelled):
        return "cancelled", False
    if isinstance(error, UpstreamUnreachable):
        return "unreachable", True
    return "failed", True


def _retry_after_seconds(error: ProviderError) -> float:
    if not isinstance(error, UpstreamRateLimited) or not error.retry_after:
        return 0.0
    try:
        seconds = float(error.retry_after)
    except ValueError:
        return 0.0  # an HTTP date: counted as a plain failure
    return max(0.0, min(seconds, float(settings.HEALTH_COOLDOWN_MAX_SECONDS)))


def _failed(attempt: Attempt, error: ProviderError, started: float, tried: list[Tried]) -> bool:
    """Note a failed attempt; whether the next deployment may be tried."""
    outcome, counts = _outcome(error)
    tried.append(
        Tried(
            len(tried) + 1,
            attempt.deployment.pk,
            attempt.target.provider,
            outcome,
            int((time.monotonic() - started) * 1000),
        )
    )
    logger.warning(
        "upstream %s (%s) failed after %s ms: %s",
        attempt.target.credential_name,
        attempt.target.upstream_model,
        tried[-1].ms,
        error.message,
    )
    if counts:
        health.failed(attempt.deployment.pk, error.message, _retry_after_seconds(error))
    if isinstance(error, UpstreamTimedOut):
        return attempt.retry_after_timeout
    return error.retryable


def _may_try(attempt: Attempt, tried: list[Tried], *, last: bool) -> bool:
    """A half-open deployment is tried by one request at a time (a lease, taken only when the
    call is made); a request that would otherwise make no call at all still makes this one."""
    if not attempt.half_open:
        return True
    lease = attempt.target.timeout_seconds + 5
    return health.take_trial(attempt.deployment.pk, lease) or (last and not tried)


def _succeeded(attempt: Attempt, started: float, tried: list[Tried]) -> None:
    tried.append(
        Tried(
            len(tried) + 1,
            attempt.deployment.pk,
            attempt.target.provider,
            "ok",
            int((time.monotonic() - started) * 1000),
        )
    )
    if not attempt.circuit_closed:
        health.closed(attempt.deployment.pk)


def with_references(attempts: list[Attempt]) -> list[Attempt]:
    """Fetch the reference images once; each deployment then serves the request as an edit
    of them. Called with no database connection held."""
    images = load_references(attempts[0].request.references)
    return [replace(a, request=replace(a.request, images=images)) for a in attempts]


def call(attempts: list[Attempt], tried: list[Tried]) -> tuple[Attempt, ImageResult]:
    """The first deployment that answers (see the module's policy); `tried` lists every call."""
    return _first_answer(
        attempts,
        tried,
        lambda a: fanout.generate(adapter_for(a.target.provider), a.request, a.target),
    )


def open_stream(attempts: list[Attempt], tried: list[Tried]) -> tuple[Attempt, EventSource]:
    """The first streaming deployment that answers. Once a stream has begun it is this
    deployment's: there is no moving on after the first byte. A fallback that cannot stream
    is not mixed into a stream."""
    return _first_answer(
        [a for a in attempts if a.request.stream],
        tried,
        lambda a: adapter_for(a.target.provider).stream(a.request, a.target),
    )


def _first_answer(
    attempts: list[Attempt], tried: list[Tried], make: Callable[[Attempt], T]
) -> tuple[Attempt, T]:
    last_error: ProviderError | None = None
    for index, attempt in enumerate(attempts):
        if not _may_try(attempt, tried, last=index == len(attempts) - 1):
            continue
        started = time.monotonic()
        try:
            answer = make(attempt)
        except ProviderError as error:
            last_error = error
            if not _failed(attempt, error, started, tried):
                break
            continue
        _succeeded(attempt, started, tried)
        return attempt, answer
    if last_error is None:
        raise NoDeployment("No deployment that can serve this request is available.")
    raise api_error_for(last_error)
