"""The gateway's Prometheus metrics (docs/metrics.md): each inference request is observed once,
where its usage record is written (billing/metering.py), and budget holds as they are taken
and settled (billing/admission.py). /metrics serves them (gateway/metrics_view.py).

Under gunicorn every worker writes its samples to its own files in PROMETHEUS_MULTIPROC_DIR,
which gunicorn.conf.py sets before any worker starts, and a scrape adds them up; in a single
process (tests, `manage.py`) they stay in this process's `REGISTRY`. Label values are the
gateway's own words (route, status, resolved alias, provider kind, deployment id): never a
key, a prompt or a name the caller made up.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Protocol

from django.conf import settings
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

logger = logging.getLogger(__name__)

# Chosen by prometheus_client when it was first imported, from the same variable.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
if MULTIPROCESS:
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
# `_created` series exist only in a single process; without them both modes print the same.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
# Image generation takes from tens of milliseconds (local) to minutes (slow upstreams).
_SECONDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_REQUEST = ("route", "status", "alias", "provider")
_CHARGED = ("route", "alias", "provider")

REQUESTS = Counter(
    "aperture_requests",
    "Inference requests answered, by route, HTTP status, resolved alias and provider kind.",
    _REQUEST,
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "aperture_request_duration_seconds",
    "Time from the request's arrival to its answer's last byte.",
    ("route", "alias"),
    buckets=_SECONDS,
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "aperture_upstream_duration_seconds",
    "Time spent calling upstreams (every attempt) by requests that called one.",
    ("alias", "provider"),
    buckets=_SECONDS,
    registry=REGISTRY,
)
IMAGES = Counter(
    "aperture_images",
    "Images charged to callers.",
    _CHARGED,
    registry=REGISTRY,
)
COST = Counter(
    "aperture_cost_micro_usd",
    "Cost charged to callers, in micro-USD.",
    _CHARGED,
    registry=REGISTRY,
)
BUDGET_REFUSALS = Counter(
    "aperture_budget_refusals",
    "Requests refused with 402 because a budget in scope could not hold their worst case.",
    _CHARGED,
    registry=REGISTRY,
)
RATE_LIMIT_REFUSALS = Counter(
    "aperture_rate_limit_refusals",
    "Requests refused with 429 by their key's requests or images per minute.",
    _CHARGED,
    registry=REGISTRY,
)
HOLDS_IN_FLIGHT = Gauge(
    "aperture_budget_holds_in_flight",
    "Admitted requests holding money or images on at least one budget, not yet settled.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
UPSTREAM_ERRORS = Counter(
    "aperture_upstream_errors",
    "Failed upstream calls, by deployment id (empty: passthrough), provider kind and class.",
    ("deployment", "provider", "class"),
    registry=REGISTRY,
)
SHED = Counter(
    "aperture_shed",
    "Inference requests refused 503 overloaded by their process (aperture/load_shedding.py): "
    "in_flight, past APERTURE_MAX_IN_FLIGHT; work_slot, no work slot within "
    "APERTURE_WORK_WAIT_SECONDS.",
    ("reason",),
    registry=REGISTRY,
)
WORK_SLOT_WAITERS = Gauge(
    "aperture_work_slot_waiters",
    "Requests waiting for a work slot (aperture/load_shedding.py).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
RECORD_FAILURES = Counter(
    "aperture_usage_record_write_failures",
    "Usage records that could not be written (the answer still went out).",
    registry=REGISTRY,
)


class Observed(Protocol):
    """What a request's meter (billing/metering.py's Meter) tells about it."""

    @property
    def endpoint(self) -> str: ...
    @property
    def alias(self) -> str: ...
    @property
    def alias_owner(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def images(self) -> int: ...
    @property
    def cost_micro(self) -> int: ...
    @property
    def started(self) -> float: ...
    @property
    def total_ms(self) -> int | None: ...
    @property
    def upstream_ms(self) -> int: ...
    @property
    def attempts(self) -> Sequence[dict[str, object]]: ...


def observe_request(meter: Observed, *, status: int, error_code: str) -> None:
    """Count one answered request. Never raises: metrics never cost a caller their answer."""
    if not settings.METRICS_ENABLED:
        return
    try:
        _observe(meter, status, error_code)
    except Exception:
        logger.exception("could not count a request in the metrics")


def _alias_label(meter: Observed) -> str:
    """A platform alias by name (the operator's); every workspace alias as "workspace" (a
    tenant names its own, as many as it likes); "" for a name that never resolved."""
    if meter.alias_owner == "platform":
        return meter.alias[:128]
    return "workspace" if meter.alias_owner == "workspace" else ""


def _observe(meter: Observed, status: int, error_code: str) -> None:
    route, provider = meter.endpoint, meter.provider
    alias = _alias_label(meter)
    REQUESTS.labels(route, status, alias, provider).inc()
    total_ms = meter.total_ms
    seconds = total_ms / 1000 if total_ms is not None else time.monotonic() - meter.started
    REQUEST_SECONDS.labels(route, alias).observe(seconds)
    if meter.attempts:
        UPSTREAM_SECONDS.labels(alias, provider).observe(meter.upstream_ms / 1000)
        for attempt in meter.attempts:
            outcome = attempt.get("outcome")
            if outcome != "ok":
                deployment = attempt.get("deployment")
                UPSTREAM_ERRORS.labels(
                    "" if deployment is None else deployment,
                    attempt.get("provider") or "",
                    outcome,
                ).inc()
    if meter.images:
        IMAGES.labels(route, alias, provider).inc(meter.images)
    if meter.cost_micro:
        COST.labels(route, alias, provider).inc(meter.cost_micro)
    if status == 402 and error_code == "insufficient_quota":
        BUDGET_REFUSALS.labels(route, alias, provider).inc()
    elif status == 429 and error_code == "rate_limit_exceeded":
        RATE_LIMIT_REFUSALS.labels(route, alias, provider).inc()


def record_failed() -> None:
    if settings.METRICS_ENABLED:
        RECORD_FAILURES.inc()


def hold_taken() -> None:
    if settings.METRICS_ENABLED:
        HOLDS_IN_FLIGHT.inc()


def hold_settled() -> None:
    if settings.METRICS_ENABLED:
        HOLDS_IN_FLIGHT.dec()
