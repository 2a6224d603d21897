"""Routing fixtures: the gateway served by gunicorn on the test database."""

import importlib
import tempfile
from collections.abc import Iterator

import pytest
from django.apps import apps
from django.conf import settings

from tests.billing.conftest import priced_alias  # noqa: F401 - a priced model, for jobs
from tests.support import Server, gunicorn, subprocess_database_url


@pytest.fixture(scope="module")
def gateway(django_db_setup: None, django_db_blocker) -> Iterator[Server]:
    """One gunicorn (gevent) per module, on the test database; tests that use it commit their
    rows (`django_db(transaction=True)`). Its access log is kept for tests to read."""
    with django_db_blocker.unblock():
        database_url = subprocess_database_url()
    access_log = tempfile.NamedTemporaryFile(prefix="access-", suffix=".log")  # noqa: SIM115
    with (
        access_log,
        gunicorn(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": settings.REDIS_URL,
                # The fake upstreams listen on loopback: workspaces' own credentials may reach
                # them only because the operator allowlists it, as a real one would.
                "APERTURE_FETCH_ALLOWED_HOSTS": "127.0.0.1",
            },
            access_log=access_log.name,
        ) as server,
    ):
        yield server


@pytest.fixture
def list_prices(transactional_db: None) -> None:
    """The seeded list prices (a transactional test's flush removes the migration's rows)."""
    for migration in (
        "0002_seed_list_prices",
        "0005_seed_more_prices",
        "0007_seed_zai_prices",
        "0014_seed_price_rules",
    ):
        importlib.import_module(f"billing.migrations.{migration}").seed(apps, None)
