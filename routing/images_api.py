"""Image endpoints: OpenAI's /v1/images/generations and /edits, the Azure-style routes, hosted
files."""

from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.request import Request
from rest_framework.response import Response

from aperture.errors import NotFound, error_response
from aperture.json_body import read_json_object
from billing.metering import Meter
from routing.api.inference_schema import edit_schema, generation_schema
from routing.images import hosting
from routing.images.edit_form import EditForm, is_multipart, read_edit_form, read_json_edit
from routing.images.results import UrlBuilder
from routing.jobs.objects import job_object
from routing.jobs.submit import submit, take_webhook_url, wants_async
from routing.metered import MeteredView
from routing.pipeline import generate
from routing.relay import Relay
from tenants.permissions import request_principal


def _answer(result: dict[str, Any] | Relay) -> HttpResponseBase:
    """A JSON body, or a stream of server-sent events that settles when it closes."""
    if isinstance(result, Relay):
        response = StreamingHttpResponse(result, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies must not hold events back
        return response
    return Response(result)


def _url_builder(request: Request) -> UrlBuilder:
    def build(token: str) -> str:
        return request.build_absolute_uri(reverse("hosted-image", args=[token]))

    return build


def _submitted(
    request: Request,
    meter: Meter,
    body: dict[str, Any],
    webhook_url: str,
    alias: str | None,
    edit: EditForm | None = None,
) -> Response:
    """`Prefer: respond-async`: 202 with the job, queued, and where to poll it."""
    job = submit(
        principal=request_principal(request),
        meter=meter,
        body=body,
        base_url=request.build_absolute_uri("/"),
        alias_name=alias,
        edit=edit,
        webhook_url=webhook_url,
    )
    response = Response(job_object(job), status=202)
    response["Location"] = request.build_absolute_uri(reverse("image-job", args=[job.public_id]))
    return response


class ImageGenerationView(MeteredView):
    endpoint = "images.generations"

    @generation_schema
    def post(self, request: Request, alias: str | None = None) -> HttpResponseBase:
        body = read_json_object(request._request)
        is_async = wants_async(request._request)
        webhook_url = take_webhook_url(body, is_async=is_async)
        if is_async:
            return _submitted(request, self.meter, body, webhook_url, alias)
        result = generate(
            principal=request_principal(request),
            body=body,
            url_for=_url_builder(request),
            meter=self.meter,
            alias_name=alias,
        )
        return _answer(result)


class AzureImageGenerationView(ImageGenerationView):
    """`/openai/deployments/{alias}/images/generations?api-version=…`: the alias is in the path."""


class ImageEditView(MeteredView):
    """POST /v1/images/edits: multipart, as OpenAI takes it (and the SDK's images.edit sends),
    or OpenAI's JSON shape with `images: [{"image_url": …}]`; both read into one EditForm."""

    endpoint = "images.edits"

    @edit_schema
    def post(self, request: Request, alias: str | None = None) -> HttpResponseBase:
        raw = request._request
        form = read_edit_form(raw) if is_multipart(raw) else read_json_edit(raw)
        is_async = wants_async(raw)
        webhook_url = take_webhook_url(form.fields, is_async=is_async)
        if is_async:
            return _submitted(request, self.meter, form.fields, webhook_url, alias, form)
        result = generate(
            principal=request_principal(request),
            body=form.fields,
            url_for=_url_builder(request),
            meter=self.meter,
            alias_name=alias,
            edit=form,
        )
        return _answer(result)


class AzureImageEditView(ImageEditView):
    """`/openai/deployments/{alias}/images/edits?api-version=…`."""


@csrf_exempt  # it changes nothing and reads no cookie: any other method is a 404 envelope
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
