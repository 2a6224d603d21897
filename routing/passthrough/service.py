"""A passthrough call, as a plain function: the caller's native request relayed to its provider.

The payload is never rewritten. The gateway decides who may call (key, workspace, the
credential's allowed path prefixes), counts the call against rate limits and budgets before
anything goes upstream, swaps the caller's key for the provider's credential, and relays
both bodies in chunks. Settlement happens when the response closes, from what the caller
was actually sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import orjson
from django.conf import settings

from aperture.errors import InvalidRequest, PayloadTooLarge, PermissionError_
from billing import budgets, ratelimit
from billing.metering import Meter
from routing import selectors
from routing.images.generation import api_error_for, release_database_connection
from routing.passthrough import headers as header_rules
from routing.passthrough import image_routes
from routing.passthrough.form_fields import FormFieldSniffer, boundary_of
from routing.passthrough.paths import check_allowed, parse_path, upstream_url
from routing.providers import http
from routing.providers.auth import base_url_for, credential_headers
from routing.providers.base import ProviderError
from routing.relay import Relay, read_chunks
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# A JSON body of an image route is read whole (to price it) up to this size; larger ones
# stream like any other and are priced from the response alone.
JSON_FACTS_MAX_BYTES = 1024 * 1024
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


@dataclass
class IncomingBody:
    """The caller's request body, read on demand: `read(n)` returns b"" at the end."""

    read: Callable[[int], bytes]
    length: int | None  # None: chunked, length unknown
    content_type: str


class UploadStream:
    """The caller's body as requests streams it upstream, counted and capped."""

    def __init__(self, body: IncomingBody, meter: Meter, sniffer: FormFieldSniffer | None) -> None:
        self._body, self._meter, self._sniffer = body, meter, sniffer
        self._sent = 0
        if body.length is not None:
            self.len = body.length  # requests sends it as Content-Length

    def read(self, size: int = -1) -> bytes:
        wanted = CHUNK_BYTES if size is None or size < 0 else size
        if self._body.length is not None:
            wanted = min(wanted, self._body.length - self._sent)
            if wanted <= 0:
                return b""
        chunk = self._body.read(wanted)
        self._sent += len(chunk)
        if self._body.length is None:
            self._meter.bytes_in = self._sent
            if self._sent > settings.MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"Request body exceeds the limit of {settings.MAX_BODY_BYTES} bytes."
                )
        if self._sniffer is not None and chunk:
            self._sniffer.feed(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:  # requests streams any iterable with a read()
        while chunk := self.read(CHUNK_BYTES):
            yield chunk


@dataclass
class PlannedCall:
    """What is known before the upstream is called."""

    route: image_routes.ImageRoute | None
    facts: image_routes.RequestFacts | None
    data: bytes | UploadStream | None
    sniffer: FormFieldSniffer | None = None


def _plan_body(
    *,
    method: str,
    route: image_routes.ImageRoute | None,
    body: IncomingBody,
    meter: Meter,
) -> PlannedCall:
    """Read a small JSON body of an image route whole (to price it); stream everything else."""
    if method in _BODYLESS and not body.length:
        return PlannedCall(route, None, None)
    if body.length == 0:
        return PlannedCall(route, _facts(route, {}), b"")
    media_type = body.content_type.split(";")[0].strip().lower()
    if (
        route is not None
        and body.length is not None
        and body.length <= JSON_FACTS_MAX_BYTES
        and (media_type == "application/json" or media_type.endswith("+json"))
    ):
        raw = _read_exactly(body, body.length)
        try:
            fields = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fields = {}  # malformed: the upstream answers it, as it would directly
        return PlannedCall(route, _facts(route, fields if isinstance(fields, dict) else {}), raw)
    boundary = boundary_of(body.content_type) if route is not None else None
    sniffer = FormFieldSniffer(boundary) if boundary else None
    return PlannedCall(route, _facts(route, {}), UploadStream(body, meter, sniffer), sniffer)


def _facts(
    route: image_routes.ImageRoute | None, fields: Mapping[str, object]
) -> image_routes.RequestFacts | None:
    return image_routes.request_facts(route, fields) if route is not None else None


def _read_exactly(body: IncomingBody, length: int) -> bytes:
    parts, remaining = [], length
    while remaining > 0:
        chunk = body.read(min(remaining, CHUNK_BYTES))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


@dataclass
class ProxiedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: Relay


def _release_quietly(hold: budgets.Hold) -> None:
    """Free the hold of a call that failed; a hold left behind is freed by the reaper."""
    try:
        budgets.release(hold)
    except Exception:
        logger.exception("could not release the budget hold of a failed passthrough call")


def _check_key_may_pass_through(principal: KeyPrincipal) -> None:
    if principal.allowed_aliases:
        raise PermissionError_(
            "This API key is limited to certain models, so it may not call providers raw.",
            code="passthrough_not_allowed",
        )


def proxy(
    *,
    principal: KeyPrincipal,
    meter: Meter,
    credential_name: str,
    method: str,
    raw_path: str,
    query_string: str,
    caller_headers: list[tuple[str, str]],
    body: IncomingBody,
) -> ProxiedResponse:
    """Relay one native call to the credential `credential_name`, metered and limited."""
    meter.method, meter.path, meter.alias = method, raw_path[:500], ""
    target = selectors.passthrough_target(principal, credential_name)
    meter.provider = target.provider
    path = parse_path(raw_path)
    meter.path = path.decoded[:500]
    check_allowed(path, list(target.path_prefixes), target.name)
    _check_key_may_pass_through(principal)
    if target.provider == "local":
        raise InvalidRequest(
            "The local provider has no native API to pass through to.", code="unsupported"
        )
    url = upstream_url(base_url_for(target.provider, target.base_url), path, query_string)
    route = image_routes.recognise(target.provider, method, path.decoded)
    plan = _plan_body(method=method, route=route, body=body, meter=meter)
    facts = plan.facts
    if facts is not None:
        meter.upstream_model = facts.model
    meter.headers = ratelimit.enforce(
        key_id=principal.key_id,
        rpm=principal.rpm_limit,
        ipm=principal.ipm_limit,
        images=facts.n if facts else 0,
    )
    estimate = image_routes.estimate_micro(route, facts) if route and facts else 0
    # At least 1 µUSD and 1 image are held, so a budget already used up refuses every call.
    hold = budgets.reserve(
        principal=principal,
        request_id=meter.request_id,
        amount_micro=max(estimate, 1),
        images=max(facts.n if facts else 1, 1),
    )
    try:
        release_database_connection()
        injected = {**target.extra_headers, **credential_headers(target.provider, target.secret)}
        started = time.monotonic()
        upstream = http.send(
            target.provider,
            method,
            url,
            timeout=settings.PASSTHROUGH_READ_TIMEOUT,
            headers=header_rules.upstream_request_headers(caller_headers, injected=injected),
            data=plan.data,
            stream=True,
        )
        meter.upstream_ms = int((time.monotonic() - started) * 1000)
    except ProviderError as error:
        _release_quietly(hold)
        raise api_error_for(error) from None
    except BaseException:
        _release_quietly(hold)
        raise
    if upstream.status_code in (401, 403):
        logger.warning(
            "passthrough: %s refused the gateway's credential (HTTP %s)",
            target.name,
            upstream.status_code,
        )
    tally = None
    if route is not None and 200 <= upstream.status_code < 300:
        tally = image_routes.ResponseTally(
            route=route,
            content_type=upstream.headers.get("Content-Type", ""),
            content_encoding=upstream.headers.get("Content-Encoding", ""),
            cap=settings.PASSTHROUGH_METER_MAX_BYTES,
        )
    return ProxiedResponse(
        status=upstream.status_code,
        headers=header_rules.caller_response_headers(upstream.raw.headers.items()),
        body=Relay(
            source=read_chunks(upstream),
            close_source=upstream.close,
            status=upstream.status_code,
            meter=meter,
            hold=hold,
            route=route,
            facts=plan.facts,
            sniffer=plan.sniffer,
            tally=tally,
        ),
    )
