"""Liveness and readiness for load balancers and orchestrators (above every app: it asks each)."""

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from aperture import safe_cache
from billing import ratelimit
from routing import health

logger = logging.getLogger(__name__)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving; says nothing about its dependencies."""
    return JsonResponse({"status": "ok"})


def _database_state() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        return "unavailable"
    finally:
        # Give the connection back to the pool; readiness probes must not hold one.
        connection.close()


def _deployment_health(redis_answers: bool) -> str:
    """Where circuits live: "shared" (Redis), "per-process" (no Redis configured), or
    "degraded (per-process)" while Redis does not answer (routing falls back by itself)."""
    mode = health.mode()
    if mode == "shared" and not redis_answers:
        return "degraded (per-process)"
    return mode


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 while the database answers, else 503. A lost cache or Redis degrades (rate limits
    fail open, deployment health is kept per process) but does not stop us."""
    database = _database_state()
    cache = "ok" if safe_cache.ping() else "degraded"
    redis_answers = ratelimit.ping()  # the rate limits' Redis also holds deployment health
    rate_limits = "ok" if redis_answers else "degraded (failing open)"
    ready = database == "ok"
    body = {
        "status": "ready" if ready else "unavailable",
        "database": database,
        "cache": cache,
        "rate_limits": rate_limits,
        "deployment_health": _deployment_health(redis_answers),
    }
    return JsonResponse(body, status=200 if ready else 503)
