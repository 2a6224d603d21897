"""aperture/negotiation.py answers the common Accept headers without parsing them: always
as DRF's own negotiation would."""

from __future__ import annotations

import pytest
from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer, TemplateHTMLRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from aperture.negotiation import QuickContentNegotiation
from aperture.renderers import ORJSONRenderer


class _CsvRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"


class _JsonWithCharset(BaseRenderer):
    media_type = "application/json; charset=utf-8"
    format = "json"


ACCEPTS = [
    None,
    "*/*",
    "application/json",
    "application/json; indent=4",
    "text/csv",
    "text/html",
    "image/*",
    "image/png",
    "application/*",
    "text/csv, application/json;q=0.9",
    "",
]
RENDERERS = [
    [ORJSONRenderer()],
    [JSONRenderer(), TemplateHTMLRenderer()],
    [_CsvRenderer(), ORJSONRenderer()],
    [_JsonWithCharset()],
]


def _choice(
    negotiation: DefaultContentNegotiation, request: Request, renderers: list, suffix: str | None
):
    try:
        renderer, media_type = negotiation.select_renderer(request, renderers, suffix)
    except NotAcceptable:
        return "406"
    except Http404:  # a format suffix no renderer has
        return "404"
    return type(renderer), media_type


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize(
    "renderers", RENDERERS, ids=lambda r: "+".join(type(x).__name__ for x in r)
)
@pytest.mark.parametrize("suffix", [None, "json", "csv"])
def test_the_choice_is_drfs_own(accept: str | None, renderers: list, suffix: str | None) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().post("/v1/images/generations", **headers))

    ours = _choice(QuickContentNegotiation(), request, renderers, suffix)

    assert ours == _choice(DefaultContentNegotiation(), request, renderers, suffix)


@pytest.mark.parametrize("accept", ["*/*", "application/json", None])
@pytest.mark.parametrize("query", ["", "?format=csv", "?format=json"])
def test_with_a_format_parameter_the_choice_is_drfs_own_too(
    settings, accept: str | None, query: str
) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "URL_FORMAT_OVERRIDE": "format"}
    path = f"/v1/usage{query}"
    factory = APIRequestFactory()
    asked = factory.get(path) if accept is None else factory.get(path, HTTP_ACCEPT=accept)
    request = Request(asked)
    renderers = [ORJSONRenderer(), _CsvRenderer()]

    ours = _choice(QuickContentNegotiation(), request, renderers, None)

    assert ours == _choice(DefaultContentNegotiation(), request, renderers, None)
    if query == "?format=csv" and accept != "application/json":
        assert ours == (_CsvRenderer, "text/csv")  # the parameter's choice, not the first
