"""POST /v1/images/generations, as a plain function: resolve, validate, call, post-process.

The flow follows DESIGN §4: the alias is resolved for the caller's key, the body validated
against the first deployment's capabilities, the database connection handed back to the
pool, then deployments are tried in priority order (falling back only on rate limits, 5xx
and timeouts), and the result shaped into OpenAI's response.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection

from aperture import config_cache, selectors
from aperture.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from aperture.offload import run_blocking
from billing import budgets, pricing, ratelimit
from billing.metering import Meter
from routing.images import conversion, fanout, hosting
from routing.images.edit_form import EditForm
from routing.images.fetch import fetch_image
from routing.images.references import load_references
from routing.images.validation import model_name, parse_edit_request, parse_image_request
from routing.models import Deployment
from routing.passthrough import image_routes
from routing.providers.auth import auth_for
from routing.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderError,
    Target,
    UpstreamAuthFailed,
    UpstreamFailed,
    UpstreamModerated,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimedOut,
    is_base64,
)
from routing.providers.registry import adapter_for
from routing.relay import Relay
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)

UrlBuilder = Callable[[str], str]  # signed token → absolute URL


class NoDeployment(ApiError):
    status = 503
    type = "service_unavailable"
    code = "no_deployment"


@dataclass(frozen=True)
class Attempt:
    deployment: Deployment
    request: ImageRequest
    target: Target


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
    """Every deployment able to serve this body, in order; the first one's validation errors win."""
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
        except ApiError:
            if position == 0:
                raise
            continue  # a fallback that cannot take this request is skipped
        attempts.append(Attempt(deployment=deployment, request=request, target=target))
    return attempts


def api_error_for(error: ProviderError) -> ApiError:
    """The gateway's answer to a failed upstream call."""
    if isinstance(error, UpstreamModerated):
        return InvalidRequest(error.message, code="content_policy_violation")
    if isinstance(error, UpstreamRejected):
        return InvalidRequest(error.message, param=error.param, code="upstream_rejected")
    if isinstance(error, UpstreamAuthFailed):
        return UpstreamError(error.message, code="upstream_auth_failed")
    if isinstance(error, UpstreamRateLimited):
        headers = {"Retry-After": error.retry_after} if error.retry_after else {}
        return RateLimited(error.message, code="upstream_rate_limited", headers=headers)
    if isinstance(error, UpstreamTimedOut):
        return UpstreamTimeout(error.message)
    return UpstreamError(error.message)


def call_upstream(attempts: list[Attempt]) -> tuple[Attempt, ImageResult]:
    """Try each attempt in order; fall back only on retryable failures. No same-deployment retry."""
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


def _finish_image(
    image: GeneratedImage,
    request: ImageRequest,
    provider: str,
    url_for: UrlBuilder,
    lasting_urls: bool = True,
) -> dict[str, Any]:
    """One entry of `data`: in the requested response_format and output_format."""
    data, media_type = image.data, image.media_type
    wanted_format = request.output_format
    if image.b64 is not None:
        if not is_base64(image.b64):
            raise UpstreamFailed(provider, f"{provider} returned an image in invalid base64.")
        head = base64.b64decode(image.b64[:64])  # enough to tell PNG, JPEG and WebP apart
        actual = conversion.sniff_format(head)
        unchanged = actual is not None and wanted_format in (None, actual)
        if unchanged and request.response_format == "b64_json":
            return _entry({"b64_json": image.b64}, image)  # no decode, no re-encode
        data = image.content()
    if data is None and image.url is not None:
        if request.response_format == "url" and wanted_format in (None, "png") and lasting_urls:
            return _entry({"url": image.url}, image)
        data, media_type = fetch_image(provider, image.url)
    assert data is not None
    actual_format = conversion.sniff_format(data)
    if wanted_format and actual_format != wanted_format:
        data = run_blocking(
            partial(conversion.convert, provider, data, wanted_format, request.output_compression)
        )
        actual_format = wanted_format
    media_type = f"image/{actual_format}" if actual_format else (media_type or "image/png")
    if request.response_format == "url":
        return _entry({"url": url_for(hosting.sign(hosting.store(data, media_type)))}, image)
    return _entry({"b64_json": base64.b64encode(data).decode()}, image)


def _entry(fields: dict[str, Any], image: GeneratedImage) -> dict[str, Any]:
    if image.revised_prompt:
        fields["revised_prompt"] = image.revised_prompt
    return fields


def _estimate_micro(attempts: list[Attempt]) -> int:
    """The most the request may cost on any deployment it could land on."""
    return max(
        pricing.per_image_estimate(
            a.target.provider, a.target.upstream_model, a.request.size, a.request.quality
        )
        * a.request.n
        for a in attempts
    )


def generate_images(
    *,
    principal: KeyPrincipal,
    body: dict[str, Any],
    url_for: UrlBuilder,
    meter: Meter,
    alias_name: str | None = None,
    edit: EditForm | None = None,
) -> dict[str, Any] | Relay:
    """The OpenAI-shaped response body for a generation (or, with `edit`, an edit) request,
    metered and billed; for `stream: true`, its server-sent events as a Relay."""
    alias_name = alias_name or model_name(body)
    meter.alias = alias_name
    attempts = plan_attempts(principal, body, alias_name, edit)
    if not attempts:
        raise NoDeployment(f"No deployment of '{alias_name}' can serve this request.")
    if attempts[0].request.references and not attempts[0].request.is_edit:
        attempts = _with_references(attempts)
    first = attempts[0]
    meter.provider, meter.upstream_model = first.target.provider, first.target.upstream_model
    meter.size, meter.quality = first.request.size, first.request.quality or ""
    meter.headers = ratelimit.enforce(
        key_id=principal.key_id,
        rpm=principal.rpm_limit,
        ipm=principal.ipm_limit,
        images=first.request.n,
    )
    hold = budgets.reserve(
        principal=principal,
        request_id=meter.request_id,
        amount_micro=_estimate_micro(attempts),
        images=first.request.n,
    )
    if first.request.stream:
        try:
            return open_event_stream(attempts, meter, hold)
        except BaseException:
            _settle(hold, cost_micro=0, images=0)
            raise
    settled = False
    try:
        release_database_connection()
        started = time.monotonic()
        try:
            attempt, result = call_upstream(attempts)
        finally:
            meter.upstream_ms = int((time.monotonic() - started) * 1000)
        request, target = attempt.request, attempt.target
        meter.deployment_id = attempt.deployment.pk
        meter.provider, meter.upstream_model = target.provider, target.upstream_model
        try:
            caps = adapter_for(target.provider).capabilities(target.upstream_model, target.options)
            data = [
                _finish_image(image, request, target.provider, url_for, caps.lasting_urls)
                for image in result.images
            ]
        except ProviderError as error:  # downloading or decoding the upstream's image failed
            raise api_error_for(error) from None
        usage = result.usage or {}
        meter.images = len(data)
        meter.input_tokens = pricing.token_count(usage.get("input_tokens"))
        meter.output_tokens = pricing.token_count(usage.get("output_tokens"))
        meter.upstream_cost_micro = _upstream_cost(usage.get("cost"))
        meter.cost_micro = pricing.actual_cost(
            target.provider,
            target.upstream_model,
            images=len(data),
            size=result.metadata.get("size", request.size),
            quality=result.metadata.get("quality", request.quality),
            usage=result.usage,
        )
        _settle(hold, cost_micro=meter.cost_micro, images=len(data))
        settled = True
    finally:
        if not settled:
            _settle(hold, cost_micro=0, images=0)
    response: dict[str, Any] = {"created": int(time.time()), "data": data}
    metadata = dict(result.metadata)
    if request.size != "auto":
        metadata.setdefault("size", request.size)  # the concrete size chosen, always said
    if request.output_format:
        metadata["output_format"] = request.output_format
    for key in ("background", "output_format", "quality", "size"):
        if key in metadata:
            response[key] = metadata[key]
    if result.usage:
        response["usage"] = result.usage
    return response


def open_event_stream(attempts: list[Attempt], meter: Meter, hold: budgets.Hold) -> Relay:
    """The first streaming deployment that answers; its events go to the caller as they
    come and are counted as they pass. Falling back works as for buffered calls, until the
    first byte: once a stream has begun it is this deployment's."""
    release_database_connection()
    last_error: ProviderError | None = None
    for attempt in attempts:
        if not attempt.request.stream:
            continue  # a fallback that cannot stream is not mixed into a stream
        target, request = attempt.target, attempt.request
        started = time.monotonic()
        try:
            source = adapter_for(target.provider).stream(request, target)
        except ProviderError as error:
            logger.warning("upstream %s stream failed: %s", target.credential_name, error.message)
            last_error = error
            if not error.retryable:
                break
            continue
        meter.upstream_ms = int((time.monotonic() - started) * 1000)
        meter.deployment_id = attempt.deployment.pk
        meter.provider, meter.upstream_model = target.provider, target.upstream_model
        route = image_routes.ImageRoute(target.provider, "openai", path_model=target.upstream_model)
        return Relay(
            source=source.chunks,
            close_source=source.close,
            status=200,
            meter=meter,
            hold=hold,
            route=route,
            facts=image_routes.RequestFacts(
                model=target.upstream_model,
                n=request.n,
                size=None if request.size == "auto" else request.size,
                quality=request.quality,
            ),
            tally=image_routes.ResponseTally(
                route=route,
                content_type="text/event-stream",
                content_encoding="",
                cap=settings.PASSTHROUGH_METER_MAX_BYTES,
            ),
        )
    assert last_error is not None
    raise api_error_for(last_error)


def _with_references(attempts: list[Attempt]) -> list[Attempt]:
    """Fetch the reference images once (no database connection held meanwhile); each
    deployment then serves the request as an edit of them."""
    release_database_connection()
    images = load_references(attempts[0].request.references)
    return [
        Attempt(deployment=a.deployment, request=replace(a.request, images=images), target=a.target)
        for a in attempts
    ]


def _upstream_cost(value: Any) -> int | None:
    """An upstream's own reported cost in USD (OpenRouter's usage.cost), in micro-USD."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return round(value * 1_000_000)


def _settle(hold: budgets.Hold, *, cost_micro: int, images: int) -> None:
    """Settle without failing the response: an unsettled hold is released by the reaper."""
    try:
        budgets.settle(hold, cost_micro=cost_micro, images=images)
    except Exception:
        logger.exception("could not settle the budget hold of this request")


def release_database_connection() -> None:
    """Give the connection back to the pool before waiting on an upstream (DESIGN §6)."""
    if not connection.in_atomic_block:
        connection.close()
