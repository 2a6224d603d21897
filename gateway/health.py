"""Liveness and readiness for load balancers and orchestrators (above every app: it asks each)."""

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from aperture import safe_cache
from billing import ratelimit

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


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 while the database answers, else 503. A lost cache degrades but does not stop us."""
    database = _database_state()
    cache = "ok" if safe_cache.ping() else "degraded"
    rate_limits = "ok" if ratelimit.ping() else "degraded (failing open)"
    ready = database == "ok"
    body = {
        "status": "ready" if ready else "unavailable",
        "database": database,
        "cache": cache,
        "rate_limits": rate_limits,
    }
    return JsonResponse(body, status=200 if ready else 503)
