"""Reading a JSON object from a request body, as OpenAI-compatible clients send it.

`curl -d` sends `application/x-www-form-urlencoded` and some clients send no content type;
both are read as JSON. Multipart is refused with a pointer to the right endpoint; other
declared types are a 415.
"""

from typing import Any

import orjson
from django.http import HttpRequest

from aperture.db import waiting_on_network
from aperture.errors import InvalidRequest, UnsupportedMediaType

_READ_AS_JSON = {"", "application/json", "application/x-www-form-urlencoded", "text/plain"}


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type.startswith("multipart/"):
        raise InvalidRequest(
            "This endpoint takes a JSON body, not multipart/form-data.", code="invalid_content_type"
        )
    if content_type not in _READ_AS_JSON and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"Unsupported content type '{content_type}'; send application/json."
        )
    with waiting_on_network():  # the body may dribble in, for as long as its deadline allows
        raw = request.body  # RequestTimeout (408) past APERTURE_BODY_TIMEOUT_SECONDS
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body
