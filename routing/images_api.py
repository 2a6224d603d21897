"""Image endpoints: OpenAI's /v1/images/generations, the Azure-style route, hosted files."""

from functools import partial
from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest
from django.http.response import HttpResponseBase
from django.urls import reverse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.errors import NotFound, error_response
from aperture.json_body import read_json_object
from aperture.request_context import current_request_id
from billing.metering import Meter, record_usage
from routing.images import hosting
from routing.images.generation import UrlBuilder, generate_images
from tenants.key_auth import KeyPrincipal
from tenants.permissions import ImagesScope, request_principal


def _url_builder(request: Request) -> UrlBuilder:
    def build(token: str) -> str:
        return request.build_absolute_uri(reverse("hosted-image", args=[token]))

    return build


class MeteredView(APIView):
    """An inference view whose every authenticated request leaves one usage record."""

    permission_classes = [ImagesScope]
    endpoint = ""
    meter: Meter

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.meter = Meter(
            request_id=current_request_id(),
            endpoint=self.endpoint,
            bytes_in=int(request.META.get("CONTENT_LENGTH") or 0),
        )
        super().initial(request, *args, **kwargs)

    def perform_authentication(self, request: Request) -> None:
        super().perform_authentication(request)
        if isinstance(request.user, KeyPrincipal):
            self.meter.principal = request.user

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        meter = getattr(self, "meter", None)
        if meter is None:
            return response
        for name, value in meter.headers.items():
            if name not in response:
                response[name] = value
        error_code = ""
        response.render()
        if response.status_code >= 400 and isinstance(response.data, dict):
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


class ImageGenerationView(MeteredView):
    endpoint = "images.generations"

    def post(self, request: Request, alias: str | None = None) -> Response:
        body = read_json_object(request._request)
        result = generate_images(
            principal=request_principal(request),
            body=body,
            url_for=_url_builder(request),
            meter=self.meter,
            alias_name=alias,
        )
        return Response(result)


class AzureImageGenerationView(ImageGenerationView):
    """`/openai/deployments/{alias}/images/generations?api-version=…`: the alias is in the path."""


def hosted_image(request: HttpRequest, token: str) -> HttpResponseBase:
    """A signed, expiring link to an image the gateway stored. No key needed: the link is one."""
    if request.method not in ("GET", "HEAD"):
        return error_response(NotFound("Not found."))
    try:
        image = hosting.resolve(token)
    except NotFound as exc:
        return error_response(exc)
    response = FileResponse(default_storage.open(image.name, "rb"), content_type=image.media_type)
    response["Cache-Control"] = "private, max-age=300"
    return response
