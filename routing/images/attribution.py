"""Attribution: who a generation or an edit is for (OpenAI's `user`) and the tenant's own tags
(`metadata`), read from the request and kept on its usage record.

`user` is a string of at most 256 characters. `metadata` is an object of at most 16 string
values of at most 512 characters, under keys of 1-64 letters, digits and `_ . : -`. A multipart
edit, whose fields are all strings, sends `metadata` as a JSON-encoded object or as one
`metadata[<key>]` field per key (what the openai SDK makes of `extra_body={"metadata": {...}}`).
Anything else is a 400 naming the field.

Upstreams see neither: the body goes on with `user` replaced by the end user's hash, scoped to
the workspace (tenants/end_users.py), which adapters forward where the provider takes a user
field, and without `metadata`. Passthrough bodies are the provider's own and go untouched:
nothing is read from them, so a key that limits each end user refuses passthrough calls.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from aperture.errors import InvalidRequest
from billing import admission
from billing.metering import Meter
from billing.usage_reports import METADATA_KEY
from tenants.end_users import end_user_id
from tenants.key_auth import KeyPrincipal

MAX_USER_CHARS = 256
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE_CHARS = 512
_BRACKETED = re.compile(r"metadata\[(.*)\]", re.DOTALL)


def note(*, meter: Meter, principal: KeyPrincipal, body: dict[str, Any]) -> None:
    """Put the request's `user` and `metadata` on its meter, or refuse them (400; also when
    the key limits each end user and no `user` is given). From here on the body names the end
    user by its hash only, and carries no metadata, so nothing after can forward either."""
    user = read_user(body)
    metadata = read_metadata(body)
    admission.require_end_user(principal, user)
    meter.end_user, meter.metadata = user, metadata
    for name in [name for name in body if name == "metadata" or _BRACKETED.fullmatch(name)]:
        del body[name]
    if user:
        body["user"] = end_user_id(principal.workspace_id, user)


def read_user(body: dict[str, Any]) -> str:
    value = body.get("user")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    if len(value) > MAX_USER_CHARS:
        raise InvalidRequest(
            f"'user' is {len(value)} characters; at most {MAX_USER_CHARS}.", param="user"
        )
    if "\x00" in value:
        raise InvalidRequest("'user' must not contain NUL characters.", param="user")
    return value


def read_metadata(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("metadata")
    fields = {
        match[1]: item for name, item in body.items() if (match := _BRACKETED.fullmatch(name))
    }
    if fields:
        if value is not None:
            raise InvalidRequest(
                "Send 'metadata' as one object or as metadata[<key>] fields, not both.",
                param="metadata",
            )
        value = fields
    if value is None:
        return {}
    if isinstance(value, str):  # a multipart form's field
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                "'metadata' must be a JSON object of strings.", param="metadata"
            ) from None
    if not isinstance(value, dict):
        raise InvalidRequest("'metadata' must be an object of strings.", param="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"'metadata' has {len(value)} keys; at most {MAX_METADATA_KEYS}.", param="metadata"
        )
    for key, item in value.items():
        if not METADATA_KEY.fullmatch(key):
            raise InvalidRequest(
                f"Invalid 'metadata' key {key[:80]!r}: keys are 1-64 letters, digits, "
                "'_', '.', ':' or '-'.",
                param="metadata",
            )
        param = f"metadata.{key}"
        if not isinstance(item, str):
            raise InvalidRequest(f"'{param}' must be a string.", param=param)
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"'{param}' is {len(item)} characters; at most {MAX_METADATA_VALUE_CHARS}.",
                param=param,
            )
        if "\x00" in item:
            raise InvalidRequest(f"'{param}' must not contain NUL characters.", param=param)
    return dict(value)
