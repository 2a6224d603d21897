"""The one request path. Every inference route — generations, edits, their streams, the
Azure-style routes and passthrough — runs these steps, in this order:

1. resolve   the target: an alias's deployments (routing/router.py) or a passthrough
             credential and native path (routing/passthrough/service.py), with the body
             read and validated; a model without a price is refused here (400)
2. estimate  the worst case: every image the call may produce, at the dearest price
   guard     the prompt against the platform's and the workspace's guardrail policies
             (routing/guardrails): a blocked prompt is a 400 before anything is held
3. admit     rate limits and budget holds for that worst case (billing/admission.py):
             429 or 402 before anything goes upstream
4. release   the database connection, before waiting on an upstream
5. call      the upstream: the router orders the deployments by strategy and health and
             moves on within the alias's retry policy
6. tally     what the upstream produced (routing/tally.py); an answer relayed as it comes
             is tallied as it passes, and read to its end if the caller hangs up
   screen    with an output moderation policy, the images before they are returned
7. settle    the hold into what was produced (never past a budget)
8. record    one usage record, once the answer has gone out (routing/metered.py; an async
             job's when it ends: routing/jobs/run.py)

A route adds only what is its own: parsing its body, shaping its answer. An async job
(routing/jobs) is let in (1-3) when it is submitted, and produced (4-8) by a worker.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.conf import settings

from aperture.api_fields import usd
from aperture.db import release_connection
from aperture.errors import InvalidRequest
from billing import admission, pricing
from billing.metering import Meter
from routing import router
from routing.guardrails import check as guardrails
from routing.guardrails.policies import ActivePolicy
from routing.images import attribution, results
from routing.images.edit_form import EditForm
from routing.images.results import UrlBuilder
from routing.images.validation import model_name
from routing.passthrough import service as passthrough
from routing.providers.base import ImageRequest, ImageResult, ProviderError
from routing.providers.errors import api_error_for
from routing.providers.http import read_chunks
from routing.providers.registry import adapter_for
from routing.relay import UPSTREAM_ERRORS, Ending, Relay, Stamp
from routing.tally import Counted, ResponseTally, for_answer
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Estimate:
    images: int
    cost_micro: int  # at the provider's price: the hold is this marked up
    snapshot: dict[str, Any] = field(default_factory=dict)  # the price applied


@dataclass
class Ticket:
    """An admitted request: who pays, and what is held for it."""

    meter: Meter
    admitted: admission.Admission
    principal: KeyPrincipal
    settled: bool = False


def admit(
    principal: KeyPrincipal,
    meter: Meter,
    estimate: Estimate,
    *,
    unpriced_call: bool = False,
    held_until: datetime | None = None,
) -> Ticket:
    admitted = admission.admit(
        principal=principal,
        request_id=meter.request_id,
        images=estimate.images,
        cost_micro=estimate.cost_micro,
        unpriced_call=unpriced_call,
        end_user=meter.end_user,
        held_until=held_until,
    )
    meter.headers = admitted.headers
    meter.admitted = True
    return Ticket(meter=meter, admitted=admitted, principal=principal)


def settle(
    ticket: Ticket, *, images: int, cost_micro: int, snapshot: dict[str, Any] | None = None
) -> None:
    """Charge what the call produced, `cost_micro` at the provider's price marked up by the
    workspace's multiplier (never past a budget); the record says the same, with both costs
    and the price applied. Once: a second settle of a ticket changes nothing."""
    meter = ticket.meter
    if ticket.settled:
        return
    ticket.settled = True
    charge = admission.settle(ticket.admitted, images=images, cost_micro=cost_micro)
    meter.images, meter.cost_micro = charge.images, charge.cost_micro
    meter.provider_cost_micro = charge.provider_cost_micro
    if snapshot:
        meter.price_snapshot = {**snapshot, "multiplier": str(ticket.admitted.multiplier)}


@contextmanager
def released_if_failed(ticket: Ticket) -> Iterator[None]:
    """A call that fails before it produced anything costs nothing."""
    try:
        yield
    except BaseException:
        settle(ticket, images=0, cost_micro=0)
        raise


def _settle_counted(
    ticket: Ticket,
    estimate: Estimate,
    quote_of: Callable[[Counted], pricing.Quote],
    counted: Counted | None,
) -> None:
    """Settle on what an answer held (6. tally done, 7. settle); None: it could not be
    measured (too large, encoded past reading), so as estimated."""
    meter = ticket.meter
    if counted is None:
        meter.error_code = meter.error_code or "unmetered_response"
        settle(
            ticket,
            images=estimate.images,
            cost_micro=estimate.cost_micro,
            snapshot=estimate.snapshot,
        )
        return
    meter.input_tokens, meter.output_tokens = counted.input_tokens, counted.output_tokens
    quote = quote_of(counted) if counted.images else pricing.Quote(0, {})
    settle(ticket, images=counted.images, cost_micro=quote.cost_micro, snapshot=quote.snapshot)


def _settle_when_relayed(
    ticket: Ticket, estimate: Estimate, quote_of: Callable[[Counted], pricing.Quote]
) -> Callable[[Ending], None]:
    """How an answer relayed as it comes settles once it ends (unless it settled already)."""

    def end(ending: Ending) -> None:
        meter = ticket.meter  # how it ended; else what settling ahead noted (unmetered)
        meter.error_code = ending.outcome or meter.error_code
        if not ticket.settled:
            _settle_counted(ticket, estimate, quote_of, ending.counted)

    return end


def _served_by(meter: Meter, attempt: router.Attempt, number: int) -> None:
    """Who served the request: on the record, and said to the caller (no credential name)."""
    meter.deployment_id = attempt.deployment.pk
    meter.provider, meter.upstream_model = attempt.target.provider, attempt.target.upstream_model
    meter.headers["x-aperture-provider"] = attempt.target.provider
    meter.headers["x-aperture-attempt"] = str(number)


# --- /v1/images/generations and /v1/images/edits (and the Azure-style routes) -------------


@dataclass
class Admitted:
    """A generation or edit let in (1-3 done): what the call (4-7) then needs."""

    plan: router.Plan
    ticket: Ticket
    screening: list[ActivePolicy]


def generate(
    *,
    principal: KeyPrincipal,
    meter: Meter,
    body: dict[str, Any],
    url_for: UrlBuilder,
    alias_name: str | None = None,
    edit: EditForm | None = None,
) -> dict[str, Any] | Relay:
    """OpenAI's response body for a generation (or, with `edit`, an edit), or for
    `stream: true` its server-sent events as a Relay that settles when it ends."""
    admitted = let_in(principal=principal, meter=meter, body=body, alias_name=alias_name, edit=edit)
    return produce(admitted, url_for)


def let_in(
    *,
    principal: KeyPrincipal,
    meter: Meter,
    body: dict[str, Any],
    alias_name: str | None = None,
    edit: EditForm | None = None,
    held_until: datetime | None = None,
) -> Admitted:
    """Steps 1-3 of a generation or edit: resolved, estimated, guarded and admitted, or a
    4xx. An async job is let in at submit, its hold `held_until` its deadline."""
    attribution.note(meter=meter, principal=principal, body=body)  # user (hashed), metadata
    alias_name = alias_name or model_name(body)
    if "\x00" in alias_name:  # no alias has one, and PostgreSQL's text refuses it
        raise InvalidRequest("The model name must not contain a NUL character.", param="model")
    meter.alias = alias_name  # the caller's own record says what it asked for
    planned = router.plan(principal, body, alias_name, edit)  # 1. resolve
    _resolved(meter, planned)
    first = planned.attempts[0]
    estimate = _worst_case(planned)  # 2. estimate
    route = _route(edit)
    screening = guardrails.output_policies(principal, route)
    if first.request.stream:
        guardrails.refuse_unscreenable(screening, stream=True)
    guardrails.check_prompt(  # guard
        principal=principal, meter=meter, route=route, prompt=first.request.prompt
    )
    ticket = admit(principal, meter, estimate, held_until=held_until)  # 3. admit
    return Admitted(plan=planned, ticket=ticket, screening=screening)


def _worst_case(planned: router.Plan) -> Estimate:
    """Every image the call may produce, at the dearest deployment's price."""
    worst = max((a.estimate() for a in planned.attempts), key=lambda quote: quote.cost_micro)
    return Estimate(
        images=planned.attempts[0].request.n, cost_micro=worst.cost_micro, snapshot=worst.snapshot
    )


def resume(
    *,
    principal: KeyPrincipal,
    ticket: Ticket,
    body: dict[str, Any],
    alias_name: str,
    edit: EditForm | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> Admitted:
    """A generation or edit let in earlier (an async job's, by its worker): resolved again
    (a deployment may have changed since), on the hold taken then, grown if its worst case
    rose meanwhile (or a 402). `stop_requested` tells an adapter that can stop a call under
    way (Replicate's) that the caller cancelled."""
    planned = router.plan(principal, body, alias_name, edit)  # 1. resolve
    estimate = _worst_case(planned)  # 2. estimate, 3. the hold covers it
    ticket.admitted = admission.cover(
        ticket.admitted, images=estimate.images, cost_micro=estimate.cost_micro
    )
    if stop_requested is not None:
        planned = replace(
            planned,
            attempts=[
                replace(a, request=replace(a.request, stop_requested=stop_requested))
                for a in planned.attempts
            ],
        )
    _resolved(ticket.meter, planned)
    screening = guardrails.output_policies(principal, _route(edit))
    return Admitted(plan=planned, ticket=ticket, screening=screening)


def _route(edit: EditForm | None) -> str:
    return "edits" if edit is not None else "generations"


def _resolved(meter: Meter, planned: router.Plan) -> None:
    # Resolved: only now may the name become a metric label (aperture/metrics.py).
    meter.alias_owner = "workspace" if planned.alias.workspace_id is not None else "platform"
    first = planned.attempts[0]
    meter.provider, meter.upstream_model = first.target.provider, first.target.upstream_model
    meter.size, meter.quality = first.request.size, first.request.quality or ""


def produce(admitted: Admitted, url_for: UrlBuilder) -> dict[str, Any] | Relay:
    """Steps 4-7 of a generation or edit let in: the call, its tally and its settlement."""
    ticket, planned, screening = admitted.ticket, admitted.plan, admitted.screening
    meter, principal = ticket.meter, ticket.principal
    first = planned.attempts[0]
    with released_if_failed(ticket):
        release_connection()  # 4. release
        attempts = router.order(planned)  # by strategy, skipping open circuits
        if first.request.references and not first.request.is_edit:
            attempts = router.with_references(attempts)
        if first.request.stream:
            return _open_stream(ticket, attempts)  # 5-7 as the events pass
        started, tried = time.monotonic(), list[router.Tried]()
        try:
            attempt, result = router.call(attempts, tried)  # 5. call
        finally:
            meter.upstream_ms = int((time.monotonic() - started) * 1000)
            meter.attempts = [t.as_record() for t in tried]
        _served_by(meter, attempt, len(tried))
        request, target = attempt.request, attempt.target
        caps = adapter_for(target.provider).capabilities(target.upstream_model, target.options)
        images = result.images[: request.n]  # never more than asked for: the hold is for n
        made = len(images)
        screened = None
        try:  # 6. tally: the images as the caller gets them
            if screening:  # screen
                images, screened = guardrails.screen_images(
                    meter=meter, policies=screening, images=images, provider=target.provider
                )
            data = [
                results.finish_image(image, request, target.provider, url_for, caps.lasting_urls)
                for image in images
            ]
        except ProviderError as error:  # downloading or decoding the upstream's image failed
            raise api_error_for(error) from None
    usage = result.usage or {}
    meter.input_tokens = pricing.token_count(usage.get("input_tokens"))
    meter.output_tokens = pricing.token_count(usage.get("output_tokens"))
    meter.upstream_cost_micro = _upstream_cost(usage.get("cost"))
    produced = Counted(
        images=made,
        size=_made_size(request, result),
        quality=result.metadata.get("quality"),
        usage=result.usage,
    )
    quote = attempt.quote_of(produced)
    cost, charged = quote.cost_micro, len(data)
    if screened is not None:  # withheld images are paid for unless the policy says not
        charged = screened.charged
        cost = cost * charged // made if made else 0
    settle(ticket, images=charged, cost_micro=cost, snapshot=quote.snapshot)  # 7. settle
    if screened is not None:
        guardrails.refuse_output(principal, meter, screened)  # paid for, withheld
    # The charge in the body, as on the record (and in x-aperture-cost-usd: routing/metered.py).
    return results.with_cost(results.response_body(data, request, result), meter.cost_micro)


def _made_size(request: ImageRequest, result: ImageResult) -> str | None:
    """The size of the images made: as the upstream said; else, asked for "auto", as the
    first image's header says (None: as asked)."""
    said = result.metadata.get("size")
    if isinstance(said, str) and said != "auto":
        return said
    if request.size != "auto" or not result.images:
        return None
    return results.measured_size(result.images[0])


def _open_stream(ticket: Ticket, attempts: list[router.Attempt]) -> Relay:
    meter = ticket.meter
    started, tried = time.monotonic(), list[router.Tried]()
    try:
        attempt, source = router.open_stream(attempts, tried)  # 5. call
    finally:
        meter.upstream_ms = int((time.monotonic() - started) * 1000)
        meter.attempts = [t.as_record() for t in tried]
    _served_by(meter, attempt, len(tried))
    worst = attempt.estimate()
    return Relay(
        source=source.chunks,
        close_source=source.close,
        meter=meter,
        on_end=_settle_when_relayed(
            ticket,
            Estimate(attempt.request.n, worst.cost_micro, worst.snapshot),
            attempt.quote_of,
        ),
        tally=for_answer("openai", "text/event-stream", ""),
        drain_seconds=attempt.target.timeout_seconds,
        stamp=_stamp_costs(ticket, attempt),
    )


def _stamp_costs(ticket: Ticket, attempt: router.Attempt) -> Stamp:
    """What a stream's `*.completed` events say in `usage.cost`: the charge for what the
    stream held up to each. The one that completes the last image asked for settles the
    request as it passes (6-7), so it carries the figure on the record; one the upstream
    sends beyond that repeats it. A stream that ends short of `n` settles when it ends."""
    meter, multiplier = ticket.meter, ticket.admitted.multiplier

    def stamp(counted: Counted) -> str:
        if not ticket.settled and counted.images >= attempt.request.n:
            _settle_counted(ticket, Estimate(0, 0), attempt.quote_of, counted)
        if ticket.settled:
            return usd(meter.cost_micro)
        return usd(admission.marked_up(attempt.cost_of(counted), multiplier))

    return stamp


# --- /{credential}/{native path}: passthrough ---------------------------------------------


@dataclass
class ProxiedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: Relay


def pass_through(
    *, principal: KeyPrincipal, meter: Meter, request: passthrough.NativeRequest
) -> ProxiedResponse:
    """Relay one native call to its credential's provider, metered and limited."""
    call = passthrough.resolve(principal=principal, meter=meter, request=request)  # 1. resolve
    facts = call.facts
    estimate = Estimate(  # 2. estimate
        images=facts.n if facts else 0, cost_micro=call.estimate_micro()
    )
    if call.route is not None:  # guard: an image route's prompt, as the gateway reads it
        try:
            screening = guardrails.output_policies(principal, "passthrough")
            guardrails.refuse_unscreenable(screening, stream=False)
            guardrails.check_prompt(
                principal=principal, meter=meter, route="passthrough", prompt=call.prompt
            )
        except BaseException:
            call.close()
            raise
    ticket = admit(principal, meter, estimate, unpriced_call=facts is None)  # 3. admit
    with released_if_failed(ticket):
        release_connection()  # 4. release
        started = time.monotonic()
        outcome = "ok"
        try:
            upstream = passthrough.send(call)  # 5. call
        except ProviderError as error:
            outcome = router.outcome_of(error)
            raise api_error_for(error) from None
        finally:
            call.close()
            meter.upstream_ms = int((time.monotonic() - started) * 1000)
            meter.attempts = [
                router.Tried(1, None, call.target.provider, outcome, meter.upstream_ms).as_record()
            ]
    meter.headers["x-aperture-provider"] = call.target.provider
    meter.headers["x-aperture-attempt"] = "1"
    source, tally = read_chunks(upstream), passthrough.response_tally(call, upstream)
    on_end = _settle_when_relayed(ticket, estimate, call.quote_of)
    if tally is None or not tally.streaming:
        # Settled before the answer's head goes out, so the head says what it cost.
        source = _settled_ahead(ticket, estimate, call.quote_of, source, tally)
        meter.headers["x-aperture-cost-usd"] = usd(meter.cost_micro)
        tally = None
    return ProxiedResponse(
        status=upstream.status_code,
        headers=passthrough.answer_headers(upstream),
        body=Relay(
            source=source,
            close_source=upstream.close,
            meter=meter,
            on_end=on_end,
            tally=tally,
            drain_seconds=settings.PASSTHROUGH_READ_TIMEOUT,
        ),
    )


def _settled_ahead(
    ticket: Ticket,
    estimate: Estimate,
    quote_of: Callable[[Counted], pricing.Quote],
    source: Iterator[bytes],
    tally: ResponseTally | None,
) -> Iterator[bytes]:
    """Settle a passthrough answer that is not a stream before relaying it (6-7): nothing
    to count costs nothing; an image route's answer is read whole first (up to the tally's
    cap, within the hold's life), and settled on what it holds, or as estimated if it could
    not be measured. Returns the body to relay: what was read, then the rest. An upstream
    that broke while it was read is no image; the relay then ends the way it broke."""
    if tally is None or tally.unreadable:
        _settle_counted(ticket, estimate, quote_of, Counted() if tally is None else None)
        return source
    read: list[bytes] = []
    deadline = time.monotonic() + max(60.0, settings.RESERVATION_TTL_SECONDS - 60.0)
    try:
        for chunk in source:
            read.append(chunk)
            tally.feed(chunk)
            if tally.overflowed or time.monotonic() > deadline:
                break
        else:
            _settle_counted(ticket, estimate, quote_of, tally.result())
            return iter(read)
    except UPSTREAM_ERRORS as broken:
        _settle_counted(ticket, estimate, quote_of, Counted())
        return _then_raise(read, broken)
    _settle_counted(ticket, estimate, quote_of, None)  # too large, or too slow, to measure
    return itertools.chain(read, source)


def _then_raise(chunks: list[bytes], error: BaseException) -> Iterator[bytes]:
    yield from chunks
    raise error


def _upstream_cost(value: Any) -> int | None:
    """An upstream's own reported cost in USD (OpenRouter's usage.cost), in micro-USD."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return round(value * 1_000_000)
