"""The usage record of one request: filled in along the request path, written once at the end.

Writing is one INSERT, made together with the records other requests of the process are
writing at the same moment (aperture/group_commit.py: under load, one round trip and one
commit for many); the request returns once its own is written, as if alone. If it fails the
response still goes out, the failure is logged and counted (`RECORDING_FAILURES`, and the
metrics), and nothing else is affected. The request is counted in the Prometheus metrics
(aperture/metrics.py), unauthenticated ones too: a whole answer's once it is out
(routing/metered.py), anything else's as its record is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from aperture import metrics
from aperture.db import prepared_cursor, release_connection
from aperture.group_commit import GroupWriter
from aperture.request_context import current_client_request_id
from billing.models import UsageRecord
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)
RECORDING_FAILURES = {"count": 0}


@dataclass
class Meter:
    request_id: str
    endpoint: str
    bytes_in: int = 0
    started: float = field(default_factory=time.monotonic)
    # Made within the request, so the caller's own id is the one the middleware kept.
    client_request_id: str = field(default_factory=current_client_request_id)
    principal: KeyPrincipal | None = None
    alias: str = ""
    # Whose alias it is ("platform" or "workspace"), once it resolved: a workspace names its
    # own aliases, so their names never become metric labels (aperture/metrics.py).
    alias_owner: str = ""
    deployment_id: int | None = None
    provider: str = ""
    upstream_model: str = ""
    images: int = 0
    size: str = ""
    quality: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro: int = 0
    upstream_cost_micro: int | None = None
    upstream_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    total_ms: int | None = None
    # Passthrough calls: the native method and path, what was relayed, and how it ended.
    method: str = ""
    path: str = ""
    bytes_out: int = 0
    error_code: str = ""
    # Every upstream call of the request, in order (routing/router.py's Tried.as_record).
    attempts: list[dict[str, object]] = field(default_factory=list)
    # Guardrail policies that matched (routing/guardrails): names, never the prompt.
    guardrails: list[dict[str, str]] = field(default_factory=list)
    # At the provider's price, before the workspace's multiplier (None: cost_micro).
    provider_cost_micro: int | None = None
    # The price applied, as it was (billing/pricing.py).
    price_snapshot: dict[str, object] = field(default_factory=dict)
    # Attribution: the request's `user` and `metadata`.
    end_user: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # Admitted: rate limits passed and budgets held (past this, the request may cost money).
    admitted: bool = False
    # Handed to an async job, which writes the record when it ends (routing/jobs).
    deferred: bool = False
    # The answer's ending (its record: routing/metered.py), run once by `end`.
    at_end: Callable[[], None] | None = None

    def finish(self) -> None:
        """Stop the clock: the answer is ready to go out (a relayed one: it has ended)."""
        self.total_ms = int((time.monotonic() - self.started) * 1000)

    def end(self) -> None:
        """Run the answer's ending, if it has not run yet: before a whole answer goes out; a
        relayed one's as its body ends whole, before the server ends it, else as it closes."""
        run, self.at_end = self.at_end, None
        if run is not None:
            run()


def record_usage(meter: Meter, *, status: int, error_code: str, bytes_out: int) -> None:
    """Count the request in the metrics and write its usage record."""
    metrics.observe_request(meter, status=status, error_code=error_code)
    write_usage(meter, status=status, error_code=error_code, bytes_out=bytes_out)


def write_usage(meter: Meter, *, status: int, error_code: str, bytes_out: int) -> None:
    """The request's usage record; a failure to write it is counted and logged, not raised."""
    principal = meter.principal
    if principal is None:
        return  # unauthenticated requests are not metered
    try:
        _insert(meter, principal, status=status, error_code=error_code, bytes_out=bytes_out)
    except Exception:
        RECORDING_FAILURES["count"] += 1
        metrics.record_failed()
        logger.exception("could not write the usage record of %s", meter.request_id)


_COLUMNS = (
    "request_id",
    "client_request_id",
    "created_at",
    "workspace_id",
    "team_id",
    "key_id",
    "alias",
    "deployment_id",
    "provider",
    "upstream_model",
    "endpoint",
    "status",
    "error_code",
    "images",
    "size",
    "quality",
    "input_tokens",
    "output_tokens",
    "cost_micro",
    "total_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
    "method",
    "path",
    "upstream_cost_micro",
    "attempts",
    "guardrails",
    "provider_cost_micro",
    "price_snapshot",
    "end_user",
    "metadata",
)
# One plain INSERT: the ORM's model machinery costs more CPU than the statement itself.
_INSERT = (
    f"INSERT INTO billing_usagerecord ({', '.join(_COLUMNS)}) "  # noqa: S608 - constant columns
    f"VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
)


def _text(value: str, limit: int) -> str:
    """A text column's value: cut to its length, a NUL (which PostgreSQL's text refuses, and
    a caller may have sent) made U+FFFD, so that the record is written all the same."""
    return value[:limit].replace("\x00", "\ufffd")


def _insert(
    meter: Meter, principal: KeyPrincipal, *, status: int, error_code: str, bytes_out: int
) -> None:
    values = (
        meter.request_id,
        _text(meter.client_request_id, 128),
        connection.ops.adapt_datetimefield_value(timezone.now()),
        principal.workspace_id,
        principal.team_id,
        principal.key_id,
        _text(meter.alias, 128),
        meter.deployment_id,
        _text(meter.provider, 32),
        _text(meter.upstream_model, 200),
        meter.endpoint,
        status,
        _text(error_code, 64),
        meter.images,
        _text(meter.size, 20),
        _text(meter.quality or "", 20),
        meter.input_tokens,
        meter.output_tokens,
        meter.cost_micro,
        meter.total_ms
        if meter.total_ms is not None
        else int((time.monotonic() - meter.started) * 1000),
        meter.upstream_ms,
        meter.bytes_in,
        bytes_out,
        _text(meter.method, 16),
        _text(meter.path, 500),
        meter.upstream_cost_micro,
        connection.ops.adapt_json_value(meter.attempts, None),
        connection.ops.adapt_json_value(meter.guardrails, None),
        meter.cost_micro if meter.provider_cost_micro is None else meter.provider_cost_micro,
        connection.ops.adapt_json_value(meter.price_snapshot, None),
        _text(meter.end_user, 256),
        connection.ops.adapt_json_value(meter.metadata, None),
    )
    if connection.in_atomic_block:  # in the caller's transaction: others' rows stay out of it
        _insert_one(values)
    else:
        RECORDS.write(values)


def _insert_one(values: tuple[Any, ...]) -> None:
    with prepared_cursor() as cursor:
        cursor.execute(_INSERT, values)


def _insert_many(rows: Sequence[tuple[Any, ...]]) -> None:
    with transaction.atomic(), prepared_cursor() as cursor:
        cursor.executemany(_INSERT, rows)


RECORDS: GroupWriter[tuple[Any, ...]] = GroupWriter(
    _insert_many,
    _insert_one,
    before_wait=release_connection,
    row_errors=(IntegrityError, DataError),
)


def rewrite_usage(meter: Meter, *, status: int, error_code: str) -> None:
    """Correct a request's record to what it came to after all (an async job failed as
    lost whose call then ended, and was settled)."""
    principal = meter.principal
    if principal is None:
        return
    UsageRecord.objects.filter(
        request_id=meter.request_id, workspace_id=principal.workspace_id
    ).update(
        status=status,
        error_code=error_code[:64],
        images=meter.images,
        cost_micro=meter.cost_micro,
        provider_cost_micro=(
            meter.cost_micro if meter.provider_cost_micro is None else meter.provider_cost_micro
        ),
        input_tokens=meter.input_tokens,
        output_tokens=meter.output_tokens,
        upstream_ms=meter.upstream_ms,
        deployment_id=meter.deployment_id,
        provider=meter.provider,
        upstream_model=meter.upstream_model,
        attempts=meter.attempts,
        price_snapshot=meter.price_snapshot,
    )
