"""Passthrough routes: `/{provider}/{path}` relays a native call to a provider, untouched."""

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

from django.http import StreamingHttpResponse
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from aperture.errors import InvalidRequest
from routing.metered import MeteredView
from routing.passthrough import headers as header_rules
from routing.passthrough.body import IncomingBody
from routing.passthrough.service import NativeRequest
from routing.pipeline import ProxiedResponse, pass_through
from tenants.authentication import NativeApiKeyAuthentication
from tenants.permissions import request_principal


class _JsonErrorsOnly(BaseContentNegotiation):
    """The gateway's own answers are JSON whatever the caller accepts (`Accept: image/*`)."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type

    def select_parser(self, request: Request, parsers: Iterable[Any]) -> Any:
        return None


def _raw_path_below(request: Request, provider: str) -> str:
    """The path after /{provider} as the caller wrote it (percent-encodings kept)."""
    raw_uri = request.META.get("RAW_URI") or request.META.get("REQUEST_URI") or ""
    raw = urlsplit(raw_uri).path if raw_uri else ""
    script = request.META.get("SCRIPT_NAME", "")
    if script and raw.startswith(script):
        raw = raw[len(script) :]
    prefix = f"/{provider}"
    if raw == prefix or raw.startswith(prefix + "/"):
        return raw[len(prefix) :] or "/"
    # No raw URI from this server (the development server): re-encode the decoded path.
    return quote(request.path_info[len(prefix) :] or "/", safe="/:@!$&'()*+,;=-._~")


def _incoming_body(request: Request) -> IncomingBody:
    environ = request._request.META
    declared = environ.get("CONTENT_LENGTH")
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if declared:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number.", code="invalid_content_length")
        length: int | None = int(declared)
        read = request._request.read  # Django's stream, limited to Content-Length
    elif chunked:
        length, read = None, environ["wsgi.input"].read  # the server de-chunks
    else:
        length, read = 0, request._request.read
    return IncomingBody(read=read, length=length, content_type=environ.get("CONTENT_TYPE", ""))


def _streaming_response(proxied: ProxiedResponse, credential_name: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(proxied.body, status=proxied.status)
    del response["Content-Type"]  # only the upstream's, if it sent one
    for name, value in proxied.headers:
        if name.lower().startswith("x-aperture-"):
            continue  # the gateway's own (cost, provider, attempt): an upstream has no say
        if name.lower() == "x-request-id":
            response["x-upstream-request-id"] = value  # x-request-id is the gateway's
        elif name in response:
            response[name] = f"{response[name]}, {value}"
        else:
            response[name] = value
    response["x-aperture-passthrough"] = credential_name
    # The upstream's content is served on the gateway's origin: never sniffed into HTML or
    # run as a page there.
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "sandbox"
    return response


class PassthroughView(MeteredView):
    endpoint = "passthrough"
    authentication_classes = [NativeApiKeyAuthentication]
    content_negotiation_class = _JsonErrorsOnly

    def relay(self, request: Request, provider: str, path: str = "") -> StreamingHttpResponse:
        native = NativeRequest(
            credential_name=provider,
            method=request.method or "GET",
            raw_path=_raw_path_below(request, provider),
            query_string=request.META.get("QUERY_STRING", ""),
            headers=header_rules.caller_headers(request.META),
            body=_incoming_body(request),
        )
        proxied = pass_through(
            principal=request_principal(request), meter=self.meter, request=native
        )
        return _streaming_response(proxied, provider)

    get = post = put = patch = delete = head = options = relay  # type: ignore[assignment]

    @property
    def default_response_headers(self) -> dict[str, str]:
        """None of DRF's own (Allow, Vary): the upstream's headers reach the caller as sent."""
        return {}
