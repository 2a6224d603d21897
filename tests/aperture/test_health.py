"""/healthz and /readyz, including against a database and a cache that are not there."""

import pytest
import requests
from django.test import Client

from tests.support import gunicorn, subprocess_database_url


def test_healthz_answers_ok(db: None) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_with_database_and_cache_up(db: None) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "database": "ok",
        "cache": "ok",
        "rate_limits": "ok",
        "deployment_health": "shared",
    }


def test_readyz_answers_503_when_the_database_is_unreachable() -> None:
    env = {"DATABASE_URL": "postgres://postgres@127.0.0.1:1/aperture", "APERTURE_DB_POOL": "false"}
    with gunicorn(env) as base:
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        response = requests.get(f"{base}/readyz", timeout=10)
    assert response.status_code == 503
    assert response.json()["database"] == "unavailable"
    assert response.json()["status"] == "unavailable"


@pytest.mark.django_db(transaction=True)
def test_readyz_stays_200_but_says_degraded_when_the_cache_is_down() -> None:
    env = {"DATABASE_URL": subprocess_database_url(), "REDIS_URL": "redis://127.0.0.1:1/0"}
    with gunicorn(env) as base:
        response = requests.get(f"{base}/readyz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "database": "ok",
        "cache": "degraded",
        "rate_limits": "degraded (failing open)",
        "deployment_health": "degraded (per-process)",
    }
