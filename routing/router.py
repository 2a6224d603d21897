"""The router: an alias resolved to the deployments that can serve a request, in the order
they are tried, and the call itself with its fallback.

A deployment that cannot take the request (its capabilities refuse it, or its model has no
price and it is not marked free) is skipped when it is a fallback; when it is the first,
its refusal is the answer. The call falls back to the next deployment only on retryable
failures (429, 5xx, timeouts), never retries in place, and a stream falls back only until
its first byte. Deployment health plugs in here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from aperture import config_cache
from aperture.errors import ApiError
from billing import pricing
from routing import selectors
from routing.images import fanout
from routing.images.edit_form import EditForm
from routing.images.references import load_references
from routing.images.validation import parse_edit_request, parse_image_request
from routing.models import Deployment
from routing.providers.auth import auth_for
from routing.providers.base import EventSource, ImageRequest, ImageResult, ProviderError, Target
from routing.providers.errors import api_error_for
from routing.providers.registry import adapter_for
from routing.tally import Counted
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)


class NoDeployment(ApiError):
    status = 503
    type = "service_unavailable"
    code = "no_deployment"


@dataclass(frozen=True)
class Attempt:
    deployment: Deployment
    request: ImageRequest
    target: Target

    @property
    def free(self) -> bool:
        return self.deployment.free or self.deployment.credential.free

    def estimate_micro(self) -> int:
        """The most this attempt may cost: n images at the dearest price the request could hit."""
        if self.free:
            return 0
        per_image = pricing.per_image_estimate(
            self.target.provider,
            self.target.upstream_model,
            self.request.size,
            self.request.quality,
        )
        return per_image * self.request.n

    def cost_of(self, produced: Counted) -> int:
        """What the images this attempt produced cost (their size and quality as the
        upstream said, else as asked)."""
        if self.free or not produced.images:
            return 0
        request = self.request
        return pricing.actual_cost(
            self.target.provider,
            self.target.upstream_model,
            images=produced.images,
            size=produced.size or (None if request.size == "auto" else request.size),
            quality=produced.quality or request.quality,
            usage=produced.usage,
        )


def target_for(deployment: Deployment) -> Target:
    credential = deployment.credential
    return Target(
        provider=credential.provider,
        credential_name=credential.name,
        base_url=(credential.base_url or auth_for(credential.provider).default_base_url),
        secret=credential.secret(),
        upstream_model=deployment.upstream_model,
        timeout_seconds=float(deployment.timeout_seconds),
        api_version=credential.api_version,
        extra_headers=dict(credential.extra_headers or {}),
        options={**(credential.options or {}), **(deployment.options or {})},
        guarded=credential.workspace_id is not None,
    )


def plan_attempts(
    principal: KeyPrincipal,
    body: dict[str, Any],
    alias_name: str,
    edit: EditForm | None = None,
) -> list[Attempt]:
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
            attempt = Attempt(deployment=deployment, request=request, target=target)
            pricing.require_price(target.provider, target.upstream_model, free=attempt.free)
        except ApiError:
            if position == 0:
                raise
            continue  # a fallback that cannot take this request is skipped
        attempts.append(attempt)
    if not attempts:
        raise NoDeployment(f"No deployment of '{alias_name}' can serve this request.")
    return attempts


def with_references(attempts: list[Attempt]) -> list[Attempt]:
    """Fetch the reference images once; each deployment then serves the request as an edit
    of them. Called with no database connection held."""
    images = load_references(attempts[0].request.references)
    return [replace(a, request=replace(a.request, images=images)) for a in attempts]


def call(attempts: list[Attempt]) -> tuple[Attempt, ImageResult]:
    """Try each attempt in order; fall back only on retryable failures."""
    last_error: ProviderError | None = None
    for attempt in attempts:
        adapter = adapter_for(attempt.target.provider)
        started = time.monotonic()
        try:
            return attempt, fanout.generate(adapter, attempt.request, attempt.target)
        except ProviderError as error:
            logger.warning(
                "upstream %s (%s) failed after %.0f ms: %s",
                attempt.target.credential_name,
                attempt.target.upstream_model,
                (time.monotonic() - started) * 1000,
                error.message,
            )
            last_error = error
            if not error.retryable:
                break
    assert last_error is not None
    raise api_error_for(last_error)


def open_stream(attempts: list[Attempt]) -> tuple[Attempt, EventSource]:
    """The first streaming deployment that answers. Once a stream has begun it is this
    deployment's: there is no falling back after the first byte."""
    last_error: ProviderError | None = None
    for attempt in attempts:
        if not attempt.request.stream:
            continue  # a fallback that cannot stream is not mixed into a stream
        target = attempt.target
        try:
            return attempt, adapter_for(target.provider).stream(attempt.request, target)
        except ProviderError as error:
            logger.warning("upstream %s stream failed: %s", target.credential_name, error.message)
            last_error = error
            if not error.retryable:
                break
    assert last_error is not None
    raise api_error_for(last_error)
