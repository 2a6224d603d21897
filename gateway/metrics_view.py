"""GET /metrics: the Prometheus scrape (docs/metrics.md).

The request counters come from aperture/metrics.py, added up over every gunicorn worker;
what is read at scrape time is computed here, above the apps it asks: each enabled
deployment's circuit (routing/health.py) and the depth of the Celery queues on the broker.
With APERTURE_METRICS_TOKEN set a scrape must present it as a bearer token; without it only
a loopback caller that came through no proxy may scrape.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from aperture import metrics
from aperture.errors import AuthenticationError, PermissionError_, error_response, not_found_view
from routing import health, health_report
from routing.models import Deployment

logger = logging.getLogger(__name__)

# A loopback caller that carries one of these is a proxy relaying someone else's scrape: any
# X-Forwarded-* (a proxy may set only X-Forwarded-Proto, which settings.py trusts), Forwarded,
# Via or X-Real-IP.
_PROXY_HEADERS = ("HTTP_FORWARDED", "HTTP_VIA", "HTTP_X_REAL_IP")
_PROXY_HEADER_PREFIX = "HTTP_X_FORWARDED_"
_STATES = (health.CLOSED, health.OPEN, health.HALF_OPEN)
# kombu's Redis transport keeps a queue's prioritised messages in lists of their own.
_PRIORITY_SEPARATOR, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not settings.METRICS_ENABLED:
        return not_found_view(request)
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(_registry()), content_type=content_type)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), token.encode()
        ):
            return None
        response = error_response(
            AuthenticationError(
                "Scraping /metrics needs the metrics token: 'Authorization: Bearer <token>'.",
                code="invalid_metrics_token",
            )
        )
        response["WWW-Authenticate"] = 'Bearer realm="aperture-metrics"'
        return response
    if _loopback(request.META.get("REMOTE_ADDR", "")) and not _proxied(request):
        return None
    return error_response(
        PermissionError_(
            "/metrics answers loopback callers only; set APERTURE_METRICS_TOKEN to scrape it "
            "from elsewhere.",
            code="metrics_loopback_only",
        )
    )


def _proxied(request: HttpRequest) -> bool:
    return any(
        name in _PROXY_HEADERS or name.startswith(_PROXY_HEADER_PREFIX) for name in request.META
    )


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a Unix socket: a proxy in front, most likely
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


@lru_cache(maxsize=1)
def _registry() -> CollectorRegistry:
    """What a scrape reads: every worker's files (or this process's registry), then the
    states read now."""
    registry = CollectorRegistry()
    if metrics.MULTIPROCESS:
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(_DeploymentHealth())
    registry.register(_CeleryQueues())
    return registry


class _ThisProcess(Collector):
    def collect(self) -> Iterable[Metric]:
        return metrics.REGISTRY.collect()


class _DeploymentHealth(Collector):
    """Each enabled deployment's circuit, one series per state (1 for the one it is in), and
    its failures in the current window: one query and one read of the shared state."""

    def collect(self) -> Iterable[Metric]:
        labels = ["deployment", "alias", "provider"]
        states = GaugeMetricFamily(
            "aperture_deployment_circuit_state",
            "Circuit of each enabled deployment: 1 for the state it is in (closed, open, "
            "half-open), else 0.",
            labels=[*labels, "state"],
        )
        failures = GaugeMetricFamily(
            "aperture_deployment_circuit_failures",
            "Failures of each enabled deployment within the health window.",
            labels=labels,
        )
        try:
            rows = list(
                Deployment.objects.filter(enabled=True)
                .order_by("pk")
                .values_list("pk", "alias__name", "alias__workspace_id", "credential__provider")
            )
            found = health_report.health_of([pk for pk, *_ in rows])
        except Exception:
            logger.exception("metrics: could not read deployment health")
            return
        for pk, name, workspace_id, provider in rows:
            alias = name if workspace_id is None else "workspace"  # a tenant's names: no label
            seen = found[pk]
            for state in _STATES:
                states.add_metric([str(pk), alias, provider, state], float(seen.status == state))
            failures.add_metric([str(pk), alias, provider], float(seen.failures))
        yield states
        yield failures


class _CeleryQueues(Collector):
    """Tasks waiting on the Redis broker, per queue; none with eager tasks (no broker)."""

    def collect(self) -> Iterable[Metric]:
        url = settings.CELERY_BROKER_URL
        if settings.CELERY_TASK_ALWAYS_EAGER or not url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            return
        queues = list(settings.METRICS_CELERY_QUEUES)
        try:
            pipe = _broker(url).pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
                for step in _PRIORITY_STEPS:
                    pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
            lengths = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a scrape without it, not a failed scrape
            logger.warning("metrics: could not read the Celery queues: %s", exc)
            return
        depth = GaugeMetricFamily(
            "aperture_celery_queue_depth",
            "Celery tasks waiting on the broker, per queue.",
            labels=["queue"],
        )
        per_queue = 1 + len(_PRIORITY_STEPS)
        for index, queue in enumerate(queues):
            waiting = lengths[index * per_queue : (index + 1) * per_queue]
            depth.add_metric([queue], float(sum(waiting)))
        yield depth


@lru_cache(maxsize=4)
def _broker(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
