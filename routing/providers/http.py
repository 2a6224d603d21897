"""The one HTTP client for upstream calls: a pooled `requests.Session` per process. A call
with a whole body (or none), no query parameters, no stream and an operator's credential goes
to kept http.client connections instead (`_send_plain`, aperture/kept_connections.py): the
same headers, errors and `requests.Response`, without requests' and urllib3's layers.

Under gunicorn's gevent workers the session's sockets are cooperative, so thousands of slow
upstream calls wait concurrently. Retries are never done here (the router decides whether
to fall back to another deployment), and redirects are not followed. The sessions keep no
cookies (aperture/outbound.py): one tenant's call never carries what an upstream set on
another's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import requests
import urllib3
from django.conf import settings
from requests.structures import CaseInsensitiveDict

from aperture.kept_connections import (
    AnswerTooLarge,
    CallFailed,
    CallTimedOut,
    KeptConnections,
    NotConnected,
)
from aperture.outbound import (
    PrivateAddress,
    ReuseCheckedAdapter,
    caused_by,
    guarded_session,
    new_session,
)
from routing.providers.auth import credential_headers
from routing.providers.base import (
    ProviderError,
    Target,
    UpstreamAuthFailed,
    UpstreamErrorBody,
    UpstreamFailed,
    UpstreamModerated,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimedOut,
    UpstreamUnreachable,
)

_session: requests.Session | None = None
CHUNK_BYTES = 64 * 1024


def session() -> requests.Session:
    global _session
    if _session is None:
        _session = new_session(
            ReuseCheckedAdapter(
                pool_connections=32, pool_maxsize=settings.UPSTREAM_POOL_SIZE, max_retries=0
            )
        )
    return _session


def send(
    provider: str,
    method: str,
    url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    files: Any = None,
    params: dict[str, str] | None = None,
    stream: bool = False,
    guarded: bool = False,
    connect_timeout: float | None = None,
) -> requests.Response:
    """One upstream call. Raises UpstreamUnreachable (never connected, nothing sent),
    UpstreamTimedOut (sent, no answer in `timeout`) or UpstreamFailed instead of requests'
    errors. `connect_timeout` defaults to APERTURE_UPSTREAM_CONNECT_TIMEOUT.

    With `stream`, the call returns once the headers are in; the caller reads and closes.
    `guarded` (a workspace's own credential) refuses, on the address it connects to, any
    host that resolves privately (aperture/outbound.py)."""
    all_headers = dict(headers or {})
    body = data
    if json_body is not None:
        body = orjson.dumps(json_body)
        all_headers.setdefault("Content-Type", "application/json")
    connect = connect_timeout or settings.UPSTREAM_CONNECT_TIMEOUT
    if not (guarded or stream or files or params) and isinstance(body, bytes | None):
        return _send_plain(provider, method, url, all_headers, body, (connect, timeout))
    try:
        response = (guarded_session() if guarded else session()).request(
            method,
            url,
            headers=all_headers,
            data=body,
            files=files,
            params=params,
            timeout=(connect, timeout),
            allow_redirects=False,
            stream=True,  # a whole answer is read here, no further than the limit
        )
        if not stream:
            deadline = time.monotonic() + timeout  # for the body, once its head is in
            read_whole(
                provider, response, limit=settings.UPSTREAM_MAX_ANSWER_BYTES, deadline=deadline
            )
        return response
    except requests.ConnectTimeout as exc:
        raise UpstreamUnreachable(provider, f"{provider} could not be reached in time.") from exc
    except requests.Timeout as exc:
        raise UpstreamTimedOut(provider, f"{provider} did not answer within {timeout:g}s.") from exc
    except requests.RequestException as exc:
        if guarded and caused_by(exc, PrivateAddress):
            raise UpstreamFailed(
                provider, f"{provider}'s base URL resolves to a private address; not called."
            ) from exc
        if caused_by(exc, urllib3.exceptions.NewConnectionError):
            raise UpstreamUnreachable(
                provider, f"{provider} could not be reached ({type(exc).__name__})."
            ) from exc
        raise UpstreamFailed(
            provider, f"{provider} could not be reached ({type(exc).__name__})."
        ) from exc


def read_whole(provider: str, response: requests.Response, *, limit: int, deadline: float) -> None:
    """The answer's body, decoded, as `response.content` (requests' own readers use it): no
    more than `limit` bytes of it (else UpstreamFailed), all of it by `deadline` (monotonic;
    else UpstreamTimedOut: an upstream that drips its answer cannot hold the request much
    longer), giving the other greenlets a turn between pieces (one that never waits on its
    socket would not). Each piece is what one read brings (`read1`), decoded no further than
    asked. Its connection is closed if it fails."""
    body = bytearray()
    try:
        while piece := response.raw.read1(64 * 1024, decode_content=True):
            body += piece
            if len(body) > limit:
                raise _too_large(provider, limit)
            if time.monotonic() > deadline:
                raise _too_slow(provider)
            time.sleep(0)  # a turn for the others (gevent's sleep, in a worker)
    except urllib3.exceptions.ReadTimeoutError as exc:
        response.close()
        raise _too_slow(provider) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut off, or not decodable
        response.close()
        raise UpstreamFailed(
            provider, f"{provider}'s answer could not be read ({type(exc).__name__})."
        ) from exc
    except BaseException:
        response.close()
        raise
    response._content = bytes(body)
    response._content_consumed = True  # type: ignore[attr-defined]


def _too_large(provider: str, limit: int) -> UpstreamFailed:
    return UpstreamFailed(
        provider,
        f"{provider} answered more than the {limit:,} bytes the gateway reads of an answer.",
    )


def _too_slow(provider: str) -> UpstreamTimedOut:
    return UpstreamTimedOut(provider, f"{provider} did not send its whole answer in time.")


def _send_plain(
    provider: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeouts: tuple[float, float],
) -> requests.Response:
    """The common call (a whole body or none, no stream, an operator's credential) on kept
    http.client connections (aperture/kept_connections.py): the session's headers, the same
    errors, and a requests.Response all the same. An interim (1xx) answer, or one whose
    length is given twice two ways, fails the call (UpstreamFailed), and its connection is
    closed: what follows on it belongs to no later call."""
    merged = CaseInsensitiveDict(session().headers)
    merged.update(headers)
    try:
        answer = _kept().call(
            method,
            url,
            merged,
            body,
            connect_timeout=timeouts[0],
            read_timeout=timeouts[1],
            max_bytes=settings.UPSTREAM_MAX_ANSWER_BYTES,
        )
    except NotConnected as exc:
        if exc.timed_out:
            raise UpstreamUnreachable(
                provider, f"{provider} could not be reached in time."
            ) from exc
        raise UpstreamUnreachable(
            provider, f"{provider} could not be reached (ConnectionError)."
        ) from exc
    except CallTimedOut as exc:
        raise UpstreamTimedOut(
            provider, f"{provider} did not answer within {timeouts[1]:g}s."
        ) from exc
    except AnswerTooLarge as exc:
        raise _too_large(provider, settings.UPSTREAM_MAX_ANSWER_BYTES) from exc
    except CallFailed as exc:
        raise UpstreamFailed(
            provider, f"{provider} could not be reached (ConnectionError)."
        ) from exc
    response = requests.Response()  # as requests' HTTPAdapter.build_response makes it
    response.status_code = answer.status
    response.headers = CaseInsensitiveDict(answer.headers)
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    response.reason = answer.reason
    response.url = url
    response._content = answer.body
    response._content_consumed = True  # type: ignore[attr-defined]  # read whole: no raw stream
    return response


_kept_connections: KeptConnections | None = None


def _kept() -> KeptConnections:
    global _kept_connections
    if _kept_connections is None:
        _kept_connections = KeptConnections(keep=settings.UPSTREAM_POOL_SIZE)
    return _kept_connections


def _json_body(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _generic_message(response: requests.Response, body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        text = response.text.strip()[:500]
        return (text or response.reason or "no message"), None
    error = body.get("error")
    if isinstance(error, dict):  # OpenAI, Google, OpenRouter, Ark
        return str(error.get("message") or error.get("code") or "no message")[:2000], (
            error.get("param") if isinstance(error.get("param"), str) else None
        )
    if isinstance(error, str):  # xAI's flat {"code", "error"}
        return error[:2000], None
    errors = body.get("errors")
    if isinstance(errors, list) and errors:  # Stability: {"name", "errors": [...]}
        return "; ".join(str(e) for e in errors)[:2000], None
    detail = body.get("detail")
    if isinstance(detail, list) and detail:  # FastAPI validation (BFL, fal)
        messages = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
        return "; ".join(messages)[:2000], None
    if isinstance(detail, str):
        return detail[:2000], None
    if isinstance(body.get("message"), str):
        return body["message"][:2000], None
    return response.text.strip()[:500], None


def _generic_code(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code") or "") if isinstance(error, dict) else ""


def error_body(provider: str, response: requests.Response) -> UpstreamErrorBody:
    """The error answer read where the provider's declared shape puts each part; a part not
    there (or no shape declared) is read the generic way."""
    # The registry is imported when called: it imports the adapters, which import this module.
    from routing.providers.registry import error_shape

    body = _json_body(response)
    message, param = _generic_message(response, body)
    code = _generic_code(body)
    shape = error_shape(provider)
    if shape is not None and isinstance(body, dict):
        message = (shape.pick(body, shape.message) or message)[:2000]
        code = shape.pick(body, shape.code) or code
        param = shape.pick(body, shape.param) or param
    return UpstreamErrorBody(message=message, code=code, param=param)


def check_status(provider: str, response: requests.Response) -> None:
    """Map an upstream's error status to a ProviderError; return for 2xx. An answer is the
    upstream's moderation when its status and code are ones the provider declares as such
    (Stability's is a 403: a refusal of the content, not of the gateway's credential)."""
    from routing.providers.registry import is_moderation, moderation_statuses  # see error_body

    status = response.status_code
    if 200 <= status < 300:
        return
    if status in (401, 403) and status not in moderation_statuses(provider):
        raise UpstreamAuthFailed(provider, status)
    error = error_body(provider, response)
    if is_moderation(provider, status, error):
        raise UpstreamModerated(provider, f"{provider}: {error.message}")
    if status in (401, 403):
        raise UpstreamAuthFailed(provider, status)
    message, param = error.message, error.param
    if status == 429:
        raise UpstreamRateLimited(
            provider, f"{provider} rate limit: {message}", response.headers.get("Retry-After")
        )
    if status == 402:  # the operator's account is out of credit: not the caller's doing
        raise UpstreamFailed(provider, f"{provider} refused for lack of credit: {message}")
    if 400 <= status < 500:
        raise UpstreamRejected(provider, f"{provider}: {message}", status=status, param=param)
    if 300 <= status < 400:
        raise UpstreamFailed(provider, f"{provider} answered a redirect (HTTP {status}).")
    raise UpstreamFailed(provider, f"{provider} failed with HTTP {status}: {message[:300]}")


def json_object(provider: str, response: requests.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailed(provider, f"{provider} returned an unreadable body.") from exc
    if not isinstance(body, dict):
        raise UpstreamFailed(provider, f"{provider} returned an unexpected body.")
    return body


def post_json(target: Target, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a JSON body as the target's credential; the JSON object answered, or the mapped
    ProviderError. The shape of most upstreams' image calls."""
    response = send(
        target.provider,
        "POST",
        url,
        timeout=target.timeout_seconds,
        connect_timeout=target.connect_timeout_seconds,
        guarded=target.guarded,
        headers={**target.extra_headers, **credential_headers(target.provider, target.secret)},
        json_body=body,
    )
    check_status(target.provider, response)
    return json_object(target.provider, response)


def read_chunks(upstream: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, still encoded: each chunk is passed on as soon as it is read
    (a stream's events are not held back to fill a buffer)."""
    raw = upstream.raw
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.read_chunked(CHUNK_BYTES, decode_content=False)
        return
    while chunk := raw.read1(CHUNK_BYTES, decode_content=False):
        yield chunk


__all__ = [
    "ProviderError",
    "UpstreamErrorBody",
    "check_status",
    "error_body",
    "json_object",
    "post_json",
    "read_chunks",
    "send",
    "session",
]
