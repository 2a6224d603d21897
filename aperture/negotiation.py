"""DRF's content negotiation, with the Accept headers that nearly every client sends (none,
`*/*`, `application/json`: curl, requests, the openai SDK) answered without parsing them.

DRF parses the header into media types and orders them by precedence on every request: a
few percent of a generation's CPU. For these headers its answer is known: the first renderer
with its own media type (for `application/json`, when that renderer is JSON's), where that
media type has no parameters. Anything else, a format suffix or `?format=` included, goes
through DRF's own negotiation unchanged.
"""

from collections.abc import Iterable
from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class QuickContentNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: Any = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        if format_suffix is None and self.settings.URL_FORMAT_OVERRIDE is None and renderers:
            accept = request.META.get("HTTP_ACCEPT", "*/*")
            first = renderers[0]
            plain = ";" not in first.media_type  # with parameters, DRF matches them too
            if plain and (accept == "*/*" or accept == "application/json" == first.media_type):
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)  # type: ignore[no-any-return]
