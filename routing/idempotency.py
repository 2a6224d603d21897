"""`Idempotency-Key` on inference POSTs (docs/idempotency.md): the first request with a key
claims it; once admitted, its answer is kept and replayed, byte for byte, to the same API key,
key and request for IDEMPOTENCY_TTL_SECONDS, with no second upstream call and no charge."""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import IO

import orjson
from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from aperture.db import release_connection, waiting_on_network
from aperture.errors import Conflict, InvalidRequest, PayloadTooLarge, Unprocessable
from billing.metering import Meter
from routing.jobs.objects import OBJECT as JOB_OBJECT
from routing.jobs.objects import job_object
from routing.models import IdempotentRequest, ImageJob
from routing.passthrough.form_fields import boundary_of
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)

META_KEY = "HTTP_IDEMPOTENCY_KEY"
REPLAYED = "Idempotent-Replayed"
# A replay has its own x-request-id (the middleware's); this names the original's, whose usage
# record carries the charge.
ORIGINAL_REQUEST_ID = "x-aperture-original-request-id"
PREFIX = "idempotency"
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# Headers of the answer that belong to the exchange, not to the answer: never replayed as
# stored (the replay's server and middleware set their own).
_NOT_KEPT = frozenset(
    {
        "x-request-id",
        "x-client-request-id",
        "content-length",
        "date",
        "server",
        "connection",
        "keep-alive",
        "transfer-encoding",
        REPLAYED.lower(),
    }
)
_NOT_KEPT_PREFIXES = ("x-ratelimit-",)  # the limits as they stood then: a replay takes none
_CHUNK_BYTES = 64 * 1024
_SPOOL_MEMORY_BYTES = 1024 * 1024  # a streamed answer spills to disk past this


@dataclass(frozen=True)
class Claim:
    """The request holds its key: its answer is kept when it ends, or the key is let go.
    `claimed_at` is the token of this holder: a takeover writes a new one."""

    record_id: int
    claimed_at: datetime
    key_id: int
    request_id: str


class Replayed(Exception):  # a control-flow signal, not an error
    """The key's first answer, to send instead of running the request again."""

    def __init__(self, response: HttpResponseBase, original_request_id: str) -> None:
        super().__init__(original_request_id)
        self.response = response
        self.original_request_id = original_request_id


def requested(request: HttpRequest) -> bool:
    """Whether the request asks for idempotency (a POST with the header): one dict lookup,
    all that a request without it pays."""
    return request.method == "POST" and META_KEY in request.META


def claim(*, principal: KeyPrincipal, request: HttpRequest, request_id: str) -> Claim:
    """Claim the request's key for it, or raise: Replayed (the first answer), 400 (a bad
    key), 409 (the first request is still running, or its answer was not kept) or 422 (the
    key was used for another request)."""
    idempotency_key = str(request.META[META_KEY])
    if not _VALID_KEY.fullmatch(idempotency_key):
        raise InvalidRequest(
            "The Idempotency-Key header must be 1 to 255 printable ASCII characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    digest = fingerprint(request, _raw_body(request))
    for _ in range(3):  # a record let go or expired between two reads: claim again
        now = timezone.now()
        claimed = _insert(principal.key_id, idempotency_key, digest, now, request_id)
        if claimed is not None:
            return claimed
        record = (
            IdempotentRequest.objects.select_related("job")
            .filter(key_id=principal.key_id, idempotency_key=idempotency_key)
            .first()
        )
        if record is None:
            continue
        if record.expires_at <= now:
            taken = _take_over(record, digest, now, request_id)
            if taken is not None:
                _delete_file(record.response_name)  # the expired answer, now unreachable
                return taken
            continue
        if record.fingerprint != digest:
            raise Unprocessable(
                "This Idempotency-Key was already used for a different request (another "
                "path, body, or Content-Type, Accept or Prefer header). Use a new key for a "
                "new request.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if record.status == IdempotentRequest.Status.IN_FLIGHT:
            abandoned = now - timedelta(seconds=settings.RESERVATION_TTL_SECONDS)
            if record.created_at <= abandoned:  # its process died with it
                taken = _take_over(record, digest, now, request_id)
                if taken is not None:
                    logger.warning("took over the abandoned idempotent request %s", record.pk)
                    return taken
                continue
            raise _in_flight()
        raise Replayed(_replay(record), str(record.response_headers.get("x-request-id", "")))
    raise _in_flight()


def release(held: Claim) -> None:
    """Let the key go (the request was refused before it could cost anything, or failed
    unexpectedly): a retry with it runs afresh. Never raises."""
    try:
        _held(held).delete()
    except Exception:
        logger.exception("could not release idempotent request %s", held.record_id)


def keep(held: Claim, response: HttpResponseBase, meter: Meter) -> HttpResponseBase:
    """The request's final response: kept to replay if the request was admitted (it may have
    cost money), else the key is let go. A streamed answer is kept as it passes, once it has
    ended whole. Returns the response to send; never raises."""
    try:
        if not meter.admitted or response.status_code == 500:  # refused, or a bug
            release(held)
            return response
        headers = _kept_headers(response, meter.request_id)
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = _Tee(held, response.status_code, headers, response)
            return response
        assert isinstance(response, HttpResponse)
        content = response.content
        job_id = _job_of(held, content) if response.status_code == 202 else None
        release_connection()  # the store may be a network call (S3)
        _finish(held, response.status_code, headers, ContentFile(content), job_id)
    except Exception:
        logger.exception("could not keep the answer of idempotent request %s", held.record_id)
        release(held)
    return response


def fingerprint(request: HttpRequest, body: bytes) -> str:
    """sha256 of what the request asks: method, target (path and query as sent), the headers
    that change the answer (Content-Type, Accept, Prefer) and the body. A multipart body's
    boundary is the client's choice, new on each try: it is left out."""
    meta = request.META
    content_type = str(meta.get("CONTENT_TYPE", ""))
    boundary = boundary_of(content_type)
    if boundary is not None:
        body = body.replace(b"--" + boundary, b"--\x00boundary\x00")
        content_type = content_type.replace(boundary.decode("latin-1"), "\x00boundary\x00")
    target = meta.get("RAW_URI") or meta.get("REQUEST_URI")
    if not target:
        query = meta.get("QUERY_STRING", "")
        target = f"{request.path}?{query}" if query else request.path
    head = orjson.dumps(
        [
            request.method,
            str(target),
            content_type,
            str(meta.get("HTTP_ACCEPT", "")),
            str(meta.get("HTTP_PREFER", "")),
        ]
    )
    return hashlib.sha256(head + b"\n" + body).hexdigest()


# --- claiming -------------------------------------------------------------------------------


def _in_flight() -> Conflict:
    return Conflict(
        "A request with this Idempotency-Key is still being processed; retry in a moment to "
        "get its answer.",
        param="Idempotency-Key",
        code="idempotency_key_in_flight",
        headers={"Retry-After": "1"},
    )


def _raw_body(request: HttpRequest) -> bytes:
    """The whole body, read once: the views read it again from the request (Django keeps it).
    A chunked body (passthrough) is read from the server's input, which is replaced by it."""
    with waiting_on_network():  # the body may dribble in, for as long as its deadline allows
        meta = request.META
        chunked = "chunked" in str(meta.get("HTTP_TRANSFER_ENCODING", "")).lower()
        if meta.get("CONTENT_LENGTH") or not chunked:
            return request.body
        pieces, received = [], 0
        while chunk := meta["wsgi.input"].read(_CHUNK_BYTES):
            received += len(chunk)
            if received > settings.MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"Request body exceeds the limit of {settings.MAX_BODY_BYTES} bytes."
                )
            pieces.append(chunk)
        body = b"".join(pieces)
        meta["wsgi.input"] = BytesIO(body)
        return body


def _insert(
    key_id: int, idempotency_key: str, digest: str, now: datetime, request_id: str
) -> Claim | None:
    """The unique constraint on (key, idempotency_key) lets exactly one request in."""
    try:
        with transaction.atomic():
            record = IdempotentRequest.objects.create(
                key_id=key_id,
                idempotency_key=idempotency_key,
                fingerprint=digest,
                status=IdempotentRequest.Status.IN_FLIGHT,
                created_at=now,
                expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS),
            )
    except IntegrityError:
        return None
    return Claim(record.pk, now, key_id, request_id)


def _take_over(
    record: IdempotentRequest, digest: str, now: datetime, request_id: str
) -> Claim | None:
    """Claim an expired or abandoned record as new: one conditional UPDATE, so that of two
    requests taking over the same record one wins."""
    taken = IdempotentRequest.objects.filter(
        pk=record.pk, status=record.status, created_at=record.created_at
    ).update(
        fingerprint=digest,
        status=IdempotentRequest.Status.IN_FLIGHT,
        job=None,
        response_status=None,
        response_headers={},
        response_name="",
        created_at=now,
        expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS),
    )
    return Claim(record.pk, now, record.key_id, request_id) if taken else None


def _held(held: Claim) -> QuerySet[IdempotentRequest]:
    """The claim's record, if this request still holds it."""
    return IdempotentRequest.objects.filter(
        pk=held.record_id, status=IdempotentRequest.Status.IN_FLIGHT, created_at=held.claimed_at
    )


# --- keeping --------------------------------------------------------------------------------


def _kept_headers(response: HttpResponseBase, request_id: str) -> dict[str, str]:
    kept = {
        name: str(value)
        for name, value in response.items()
        if name.lower() not in _NOT_KEPT and not name.lower().startswith(_NOT_KEPT_PREFIXES)
    }
    kept["x-request-id"] = request_id  # the original's: replayed as ORIGINAL_REQUEST_ID
    return kept


def _job_of(held: Claim, content: bytes) -> int | None:
    """An async submit's job (a 202 with a job object), to replay as it then stands."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("object") != JOB_OBJECT:
        return None
    return (
        ImageJob.objects.filter(public_id=str(body.get("id")), key_id=held.key_id)
        .values_list("pk", flat=True)
        .first()
    )


def _finish(
    held: Claim,
    status: int,
    headers: dict[str, str],
    body: File[bytes] | None,
    job_id: int | None = None,
) -> None:
    """Mark the record done with its answer; without a body it is done but not replayable
    (too large to keep, or cut before it ended): a retry is told so, and charged nothing."""
    name = ""
    if body is not None:  # dated as the record is, for retention's sweep of orphans
        day = held.claimed_at.astimezone(UTC)
        try:
            name = default_storage.save(f"{PREFIX}/{day:%Y/%m/%d}/{uuid.uuid4().hex}", body)
        except Exception:  # charged all the same: a retry is told so, not charged again
            logger.exception("could not store the answer of idempotent request %s", held)
    done = _held(held).update(
        status=IdempotentRequest.Status.DONE,
        response_status=status,
        response_headers=headers,
        response_name=name,
        job_id=job_id,
    )
    if not done:  # taken over meanwhile (this request outlived RESERVATION_TTL_SECONDS)
        logger.warning("idempotent request %s was taken over; its answer is dropped", held)
        _delete_file(name)


def _delete_file(name: str) -> None:
    if not name:
        return
    try:
        default_storage.delete(name)
    except Exception:
        logger.exception("could not delete the kept answer %s", name)


class _Tee:
    """A streamed answer on its way out (server-sent events, passthrough), copied as it
    passes, up to PASSTHROUGH_METER_MAX_BYTES. Kept when the stream ends whole; a stream cut
    (the caller left, the upstream broke) or too large is done but not replayable."""

    def __init__(
        self,
        held: Claim,
        status: int,
        headers: dict[str, str],
        response: StreamingHttpResponse,
    ) -> None:
        self._held, self._status, self._headers = held, status, headers
        self._chunks: Iterator[bytes] = iter(response.streaming_content)  # type: ignore[arg-type]
        self._copy: IO[bytes] | None = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=_SPOOL_MEMORY_BYTES
        )
        self._size = 0
        declared = str(response.get("Content-Length", ""))
        self._length = int(declared) if declared.isdigit() else None
        self._ended = False

    def __iter__(self) -> _Tee:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._end(whole=True)  # before the server ends the answer: a retry finds it kept
            raise
        except BaseException:
            self._end(whole=False)
            raise
        self._size += len(chunk)
        if self._copy is not None:
            if self._size > settings.PASSTHROUGH_METER_MAX_BYTES:
                self._copy.close()
                self._copy = None
            else:
                self._copy.write(chunk)
        if self._length is not None and self._size >= self._length:
            self._end(whole=True)  # all that was announced: kept before its last bytes go out
        return chunk

    def close(self) -> None:
        """Called by the server once the answer is over, however it ended."""
        self._end(whole=False)

    def _end(self, *, whole: bool) -> None:
        if self._ended:
            return
        self._ended = True
        copy, self._copy = self._copy, None
        try:
            kept = File(copy) if whole and copy is not None else None
            if kept is None:
                logger.info(
                    "the answer of idempotent request %s is not kept to replay (%s)",
                    self._held.record_id,
                    "cut before it ended" if not whole else "too large",
                )
            _finish(self._held, self._status, self._headers, kept)
        except Exception:
            logger.exception("could not keep the streamed answer of %s", self._held.record_id)
            release(self._held)
        finally:
            if copy is not None:
                copy.close()


# --- replaying ------------------------------------------------------------------------------


def _unreplayable(detail: str, original: str) -> Conflict:
    return Conflict(
        f"The first request with this Idempotency-Key ({original or 'unknown'}) ran, and what "
        f"it cost was charged once, but {detail}, so it cannot be replayed. To make the "
        "request again, send it with a new key.",
        param="Idempotency-Key",
        code="idempotency_key_unreplayable",
    )


def _replay(record: IdempotentRequest) -> HttpResponseBase:
    """The first answer again: its status, body and headers, or, for an async submit, its
    job as it stands now. No upstream call, no hold, no charge."""
    headers = dict(record.response_headers)
    original = headers.pop("x-request-id", "")
    response: HttpResponseBase
    if record.job is not None:
        response = HttpResponse(
            orjson.dumps(job_object(record.job)), status=202, content_type="application/json"
        )
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    elif not record.response_name or record.response_status is None:
        raise _unreplayable(
            f"its answer was not kept (larger than {settings.PASSTHROUGH_METER_MAX_BYTES} "
            "bytes, or a stream cut before it ended: the caller left or the upstream broke)",
            original,
        )
    else:
        try:
            stored = default_storage.open(record.response_name, "rb")
        except OSError:
            raise _unreplayable("its kept answer is gone", original) from None
        response = FileResponse(stored, status=record.response_status)
        for name in ("Content-Type", "Content-Disposition"):  # FileResponse's guesses
            if name in response:
                del response[name]
    for name, value in headers.items():
        response[name] = value
    response[REPLAYED] = "true"
    if original:
        response[ORIGINAL_REQUEST_ID] = original
    logger.info(
        "replayed the answer of %s (idempotent request %s, status %s)",
        original or "-",
        record.pk,
        response.status_code,
        extra={"original_request_id": original, "idempotent_request": record.pk},
    )
    return response
