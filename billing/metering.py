"""The usage record of one request: filled in along the request path, written once at the end.

Writing is one INSERT; if it fails the response still goes out, the failure is logged and
counted (`RECORDING_FAILURES`), and nothing else is affected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.utils import timezone

from billing.db import billing_transaction
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
    principal: KeyPrincipal | None = None
    alias: str = ""
    deployment_id: int | None = None
    provider: str = ""
    upstream_model: str = ""
    images: int = 0
    size: str = ""
    quality: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro: int = 0
    upstream_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def record_usage(meter: Meter, *, status: int, error_code: str, bytes_out: int) -> None:
    principal = meter.principal
    if principal is None:
        return  # unauthenticated requests are not metered
    try:
        with billing_transaction():
            _insert(meter, principal, status=status, error_code=error_code, bytes_out=bytes_out)
    except Exception:
        RECORDING_FAILURES["count"] += 1
        logger.exception("could not write the usage record of %s", meter.request_id)


def _insert(
    meter: Meter, principal: KeyPrincipal, *, status: int, error_code: str, bytes_out: int
) -> None:
    UsageRecord.objects.create(
        request_id=meter.request_id,
        created_at=timezone.now(),
        workspace_id=principal.workspace_id,
        team_id=principal.team_id,
        key_id=principal.key_id,
        alias=meter.alias[:128],
        deployment_id=meter.deployment_id,
        provider=meter.provider,
        upstream_model=meter.upstream_model,
        endpoint=meter.endpoint,
        status=status,
        error_code=error_code[:64],
        images=meter.images,
        size=meter.size[:20],
        quality=(meter.quality or "")[:20],
        input_tokens=meter.input_tokens,
        output_tokens=meter.output_tokens,
        cost_micro=meter.cost_micro,
        total_ms=int((time.monotonic() - meter.started) * 1000),
        upstream_ms=meter.upstream_ms,
        bytes_in=meter.bytes_in,
        bytes_out=bytes_out,
    )
