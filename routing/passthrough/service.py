"""What is passthrough's own in a passthrough call: which credential and native path it
reaches, what the call asks for, and the native request and answer around the upstream.

The payload is never rewritten. The gateway decides who may call (key, workspace, the
credential's allowed path prefixes), swaps the caller's key for the provider's credential,
strips what must not cross (routing/passthrough/headers.py), and relays both bodies. The
steps every route shares — admit, call, tally, settle — are in routing/pipeline.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import IO, Any

import requests
from django.conf import settings

from aperture.db import waiting_on_network
from aperture.errors import InvalidRequest, PermissionError_
from billing import pricing
from billing.metering import Meter
from routing import selectors
from routing.images.sizing import largest_size
from routing.passthrough import headers as header_rules
from routing.passthrough import image_routes
from routing.passthrough.body import IncomingBody, UploadStream, read_fields
from routing.passthrough.paths import check_allowed, parse_path, upstream_url
from routing.providers import http
from routing.providers.auth import base_url_for, credential_headers
from routing.providers.base import ImageRoute
from routing.providers.registry import adapter_for
from routing.tally import Counted, ResponseTally, for_answer
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


@dataclass(frozen=True)
class NativeRequest:
    """A passthrough call as the caller made it."""

    credential_name: str
    method: str
    raw_path: str  # below /{credential}, percent-encodings kept
    query_string: str
    headers: list[tuple[str, str]]
    body: IncomingBody


@dataclass
class NativeCall:
    """A passthrough call as it will go upstream."""

    target: selectors.PassthroughTarget
    method: str
    url: str
    headers: dict[str, str]
    data: bytes | IO[bytes] | UploadStream | None
    route: ImageRoute | None  # an image route: priced and counted
    facts: image_routes.RequestFacts | None  # on an image route, what the body asks for
    prompt: str = ""  # on an image route, what the guardrails read
    tier: str | None = None  # on an image route, the resolution tier the body asks for
    input_images: int = 0  # on an image route, the input and reference images it sends

    def _largest(self, provider: str, model: str) -> str:
        return largest_size(adapter_for(provider).capabilities(model))

    def estimate(self) -> pricing.Quote:
        """The most an image route's call may cost (at the provider's price); 0 for a free
        credential or another route."""
        if self.facts is None or self.route is None or self.target.free:
            return pricing.Quote(0, {})
        facts, provider = self.facts, self.route.provider
        return pricing.quote(
            provider,
            facts.model,
            images=facts.n,
            size=facts.size,
            quality=facts.quality,
            tier=self.tier,
            input_images=self.input_images,
            largest=self._largest(provider, facts.model),
            worst_case=True,
            prompt_bytes=len(self.prompt.encode()),
        )

    def estimate_micro(self) -> int:
        return self.estimate().cost_micro

    def quote_of(self, produced: Counted) -> pricing.Quote:
        """What the images in its answer cost (size and quality as the answer says, else as
        asked; tokens where the provider reports them in OpenAI's shape)."""
        if self.facts is None or self.route is None or self.target.free or not produced.images:
            return pricing.Quote(0, {})
        facts, provider = self.facts, self.route.provider
        return pricing.quote(
            provider,
            facts.model,
            images=produced.images,
            size=produced.size or facts.size,
            quality=produced.quality or facts.quality,
            tier=None if produced.size else self.tier,
            input_images=self.input_images,
            usage=produced.usage if self.route.family == "openai" else None,
            largest=self._largest(provider, facts.model),
        )

    def cost_of(self, produced: Counted) -> int:
        return self.quote_of(produced).cost_micro

    def close(self) -> None:
        """Free a spooled form once it has been sent."""
        close = getattr(self.data, "close", None)
        if close is not None:
            close()


def resolve(*, principal: KeyPrincipal, meter: Meter, request: NativeRequest) -> NativeCall:
    """The credential and native path this call reaches, and, on an image route, what its
    body asks for (read whole, before anything goes upstream)."""
    method, body = request.method, request.body
    meter.method, meter.path, meter.alias = method, request.raw_path[:500], ""
    target = selectors.passthrough_target(principal, request.credential_name)
    meter.provider = target.provider
    path = parse_path(request.raw_path)
    meter.path = path.decoded[:500]
    check_allowed(path, list(target.path_prefixes), target.name)
    if principal.allowed_aliases:
        raise PermissionError_(
            "This API key is limited to certain models, so it may not call providers raw.",
            code="passthrough_not_allowed",
        )
    if target.provider == "local":
        raise InvalidRequest(
            "The local provider has no native API to pass through to.", code="unsupported"
        )
    url = upstream_url(base_url_for(target.provider, target.base_url), path, request.query_string)
    route = image_routes.recognise(target.provider, method, path.decoded)
    if route is None:
        image_routes.refuse_unpriced(target.provider, method, path.decoded, free=target.free)
    injected = {**target.extra_headers, **credential_headers(target.provider, target.secret)}
    call = NativeCall(
        target=target,
        method=method,
        url=url,
        headers=header_rules.upstream_request_headers(request.headers, injected=injected),
        data=None,
        route=route,
        facts=None,
    )
    if route is not None:
        with waiting_on_network():  # a body may dribble in slowly
            read = read_fields(body, meter)
        call.data = read.data
        call.facts = image_routes.request_facts(route, read.fields)
        call.prompt = image_routes.prompt_of(route, read.fields)
        call.tier, call.input_images = _priced_inputs(route, read.fields, path.decoded)
        meter.upstream_model = call.facts.model
        pricing.require_price(target.provider, call.facts.model, free=target.free)
    elif method not in _BODYLESS or body.length:
        call.data = b"" if body.length == 0 else UploadStream(body, meter)
    return call


def _first(mapping: Any, *names: str) -> Any:
    """A field in whichever spelling the body uses (Google reads camelCase and snake_case)."""
    if not isinstance(mapping, dict):
        return None
    return next((mapping[name] for name in names if name in mapping), None)


def _priced_inputs(route: ImageRoute, fields: dict[str, Any], path: str) -> tuple[str | None, int]:
    """What else the price of an image call reads from its body: the resolution tier
    (Gemini's imageConfig.imageSize) and how many input or reference images it sends.
    A multipart edit's files are not counted (its text fields are all that is read): one."""
    if route.family == "gemini":
        config = _first(fields, "generationConfig", "generation_config")
        size = _first(_first(config, "imageConfig", "image_config"), "imageSize", "image_size")
        contents = fields.get("contents")
        parts = [
            part
            for content in (contents if isinstance(contents, list) else [contents])
            for part in (_first(content, "parts") or [])
            if isinstance(_first(part, "inlineData", "inline_data", "fileData", "file_data"), dict)
        ]
        return (size if isinstance(size, str) else None), len(parts)
    images = fields.get("images")
    count = len(images) if isinstance(images, list) else 0
    count += 1 if fields.get("image") is not None else 0
    if not count and path.rstrip("/").endswith("/images/edits"):
        count = 1
    return None, count


def send(call: NativeCall) -> requests.Response:
    """The native request, streamed both ways; ProviderError if it never got an answer."""
    upstream = http.send(
        call.target.provider,
        call.method,
        call.url,
        timeout=settings.PASSTHROUGH_READ_TIMEOUT,
        headers=call.headers,
        data=call.data,
        stream=True,
        guarded=call.target.guarded,
    )
    if upstream.status_code in (401, 403):
        logger.warning(
            "passthrough: %s refused the gateway's credential (HTTP %s)",
            call.target.name,
            upstream.status_code,
        )
    return upstream


def answer_headers(upstream: requests.Response) -> list[tuple[str, str]]:
    """The upstream's headers that may reach the caller (routing/passthrough/headers.py)."""
    return header_rules.caller_response_headers(upstream.raw.headers.items())


def response_tally(call: NativeCall, upstream: requests.Response) -> ResponseTally | None:
    """How the answer is counted: an image route's successful answer only."""
    if call.route is None or not 200 <= upstream.status_code < 300:
        return None
    return for_answer(
        call.route.family,
        upstream.headers.get("Content-Type", ""),
        upstream.headers.get("Content-Encoding", ""),
    )
