"""The base of every inference view: each authenticated request leaves one usage record."""

from functools import partial
from typing import Any

from django.http.response import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.renderers import ORJSONRenderer
from aperture.request_context import current_request_id
from billing.metering import Meter, record_usage
from tenants.key_auth import KeyPrincipal
from tenants.permissions import ImagesScope


class MeteredView(APIView):
    """An inference view whose every authenticated request leaves one usage record."""

    permission_classes = [ImagesScope]
    renderer_classes = [ORJSONRenderer]
    endpoint = ""
    meter: Meter

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        declared = str(request.META.get("CONTENT_LENGTH") or "0")
        self.meter = Meter(
            request_id=current_request_id(),
            endpoint=self.endpoint,
            bytes_in=int(declared) if declared.isdigit() else 0,  # a bad header is no 500
        )
        super().initial(request, *args, **kwargs)

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
        for name, value in meter.headers.items():
            if name not in response:
                response[name] = value
        if response.streaming:
            # The body's own close() (added first) settles and counts; then the record.
            response._resource_closers.append(  # type: ignore[attr-defined]
                lambda: record_usage(
                    meter,
                    status=response.status_code,
                    error_code=meter.error_code,
                    bytes_out=meter.bytes_out,
                )
            )
            return response
        assert isinstance(response, Response)
        error_code = meter.error_code  # the pipeline's own word for it (e.g. "guardrail")
        response.render()
        if not error_code and response.status_code >= 400 and isinstance(response.data, dict):
            error_code = str((response.data.get("error") or {}).get("code") or "")
        meter.finish()
        # Written once the response has gone out (WSGI calls close() after the last byte),
        # so the record's INSERT is not on the client's clock.
        response._resource_closers.append(  # type: ignore[attr-defined]
            partial(
                record_usage,
                meter,
                status=response.status_code,
                error_code=error_code,
                bytes_out=len(response.content),
            )
        )
        return response
