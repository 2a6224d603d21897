"""The base of every inference view: each authenticated request leaves one usage record, and
each of its answers that is not relayed as it comes says what it was charged
(`x-aperture-cost-usd`, the usage record's figure; a passthrough answer gets it from the
pipeline, which settles it before its head goes out). A POST with an `Idempotency-Key` is
claimed once authenticated, and its answer kept or replayed (routing/idempotency.py)."""

import logging
from decimal import Decimal
from functools import partial
from typing import Any

from django.http.response import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture import load_shedding, metrics
from aperture.api_fields import usd
from aperture.renderers import ORJSONRenderer
from aperture.request_context import current_request_id
from billing.metering import Meter, write_usage
from routing import idempotency
from tenants.key_auth import KeyPrincipal
from tenants.permissions import ImagesScope, request_principal

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("aperture.requests")
COST_HEADER = "x-aperture-cost-usd"


class MeteredView(APIView):
    """An inference view whose every authenticated request leaves one usage record."""

    permission_classes = [ImagesScope]
    renderer_classes = [ORJSONRenderer]
    endpoint = ""
    meter: Meter
    place: load_shedding.Place | None = None  # in flight until the request's answer is closed
    # With an Idempotency-Key: the claim this request holds, or the first answer it replays.
    idempotent: idempotency.Claim | None = None
    replayed: idempotency.Replayed | None = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Before the key, the body or the database: a process past its capacity says so.
        self.place = load_shedding.admit_or_shed()
        load_shedding.WORK.take()  # its turn at work, until it waits on the network
        declared = str(request.META.get("CONTENT_LENGTH") or "0")
        self.meter = Meter(
            request_id=current_request_id(),
            endpoint=self.endpoint,
            bytes_in=int(declared) if declared.isdigit() else 0,  # a bad header is no 500
        )
        super().initial(request, *args, **kwargs)
        if idempotency.requested(request._request):  # raises Replayed with the first answer
            self.idempotent = idempotency.claim(
                principal=request_principal(request),
                request=request._request,
                request_id=self.meter.request_id,
            )

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return super().dispatch(request, *args, **kwargs)
        except BaseException:  # past DRF's handler (it catches Exception): the key is let go
            if self.idempotent is not None:
                idempotency.release(self.idempotent)
            if self.place is not None:  # no answer will be closed: the request ends here
                self.place.leave()
            raise
        finally:
            load_shedding.WORK.done()

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, idempotency.Replayed):
            self.replayed = exc
            return exc.response  # type: ignore[return-value]
        return super().handle_exception(exc)

    def perform_authentication(self, request: Request) -> None:
        super().perform_authentication(request)
        if isinstance(request.user, KeyPrincipal):
            self.meter.principal = request.user

    def finalize_response(  # type: ignore[override]
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(
            request,
            response,  # type: ignore[arg-type]
            *args,
            **kwargs,
        )
        meter = getattr(self, "meter", None)
        if meter is None:
            return response
        if self.replayed is not None:
            # The original's usage record stands: a replay costs nothing and records nothing.
            meter.finish()
            status = response.status_code
            response._resource_closers.append(  # type: ignore[attr-defined]
                lambda: metrics.observe_request(meter, status=status, error_code="")
            )
            return response
        response = self._metered(response, meter)
        if self.idempotent is not None:
            response = idempotency.keep(self.idempotent, response, meter)
        if not response.streaming:
            # Recorded before the answer goes out (and once it is kept for replays, so that a
            # request stopped while its record is written keeps its key): a worker killed once
            # its caller has the answer has written its record (billing/metering.py).
            meter.end()
        return response

    def _metered(self, response: HttpResponseBase, meter: Meter) -> HttpResponseBase:
        for name, value in meter.headers.items():
            if name not in response:
                response[name] = value
        if response.streaming:
            # Recorded by the relay as its body ends whole (routing/relay.py), before the server
            # ends the answer; else (the caller left, the upstream broke) as it closes: the
            # body's own close() (added first) settles and counts, then this records.
            meter.at_end = lambda: _recorded(
                meter,
                status=response.status_code,
                error_code=meter.error_code,
                bytes_out=meter.bytes_out,
            )
            response._resource_closers.append(meter.end)  # type: ignore[attr-defined]
            return response
        assert isinstance(response, Response)
        # Settled by now (a request refused early: nothing); an async job's, when it ends.
        if meter.principal is not None and not meter.deferred:
            response[COST_HEADER] = usd(meter.cost_micro)
        error_code = meter.error_code  # the pipeline's own word for it (e.g. "guardrail")
        response.render()
        if not error_code and response.status_code >= 400 and isinstance(response.data, dict):
            error_code = str((response.data.get("error") or {}).get("code") or "")
        meter.finish()
        status = response.status_code
        meter.at_end = partial(_written, meter, status, error_code, len(response.content))
        # Counted and logged once the answer is out, off the caller's wait (the server closes
        # a response after writing it); the record itself is written before (finalize_response).
        response._resource_closers.append(partial(_counted, meter, status, error_code))  # type: ignore[attr-defined]
        return response


def _recorded(meter: Meter, *, status: int, error_code: str, bytes_out: int) -> None:
    """A relayed answer's ending: its usage record, count and log line at once."""
    _written(meter, status, error_code, bytes_out)
    _counted(meter, status, error_code)


def _written(meter: Meter, status: int, error_code: str, bytes_out: int) -> None:
    """The request's usage record (an async job's submit: none, the job writes it)."""
    if not meter.deferred:
        write_usage(meter, status=status, error_code=error_code, bytes_out=bytes_out)


def _counted(meter: Meter, status: int, error_code: str) -> None:
    """The request's count in the metrics (an async job's: when it ends) and its log line.
    Never raises: run as a response closes, where Django would drop the error unseen."""
    if not meter.deferred:
        metrics.observe_request(meter, status=status, error_code=error_code)
    try:
        log_request(meter, status=status, error_code=error_code)
    except Exception:
        logger.exception("could not log request %s", meter.request_id)


def log_request(meter: Meter, *, status: int, error_code: str) -> None:
    """One line per inference request (one JSON object with APERTURE_LOG_FORMAT=json):
    who, what, how it ended, how long it took and what it cost. Never a prompt or a secret."""
    if not request_logger.isEnabledFor(logging.INFO):
        return
    principal = meter.principal
    total_ms = meter.total_ms if meter.total_ms is not None else 0
    cost_usd = f"{Decimal(meter.cost_micro) / 1_000_000:.6f}"
    fields: dict[str, object] = {
        "request_id": meter.request_id,
        "workspace_id": principal.workspace_id if principal else None,
        "key": principal.public_id if principal else None,
        "endpoint": meter.endpoint,
        "alias": meter.alias,
        "provider": meter.provider,
        "status": status,
        "error_code": error_code,
        "latency_ms": total_ms,
        "upstream_ms": meter.upstream_ms,
        "images": meter.images,
        "cost_usd": cost_usd,
    }
    if meter.guardrails:
        fields["guardrails"] = sorted({note["policy"] for note in meter.guardrails})
    request_logger.info(
        "%s %s %s in %d ms: %d image(s), $%s%s",
        meter.endpoint,
        _printable(meter.alias or meter.path or "-"),
        status,
        total_ms,
        meter.images,
        cost_usd,
        f" ({error_code})" if error_code else "",
        extra=fields,
    )


def _printable(text: str) -> str:
    """Caller-chosen text in a text log line, with control characters escaped: a newline in
    a path must not start a line the caller wrote."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
