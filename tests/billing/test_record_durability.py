"""A web worker killed with SIGKILL under load loses no usage record of a response it
completed: a buffered answer goes out only once its record is committed, a stream's last
chunk only once its call is settled and recorded."""

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from django.conf import settings

from billing.models import UsageRecord
from routing.models import ProviderCredential
from tenants.models import Team
from tenants.services import CreatedKey, key_create
from tests.conftest import ACTOR, make_alias
from tests.fakes.upstream import FakeUpstream
from tests.support import Server, gunicorn, subprocess_database_url, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, DURING = 5, 12  # requests answered before the kill; requests in flight at the kill


@pytest.fixture
def server() -> Iterator[Server]:
    env = {"DATABASE_URL": subprocess_database_url(), "REDIS_URL": settings.REDIS_URL}
    with gunicorn(env, workers=1) as base:
        yield base


@pytest.fixture
def key(team: Team, openai_credential: ProviderCredential) -> CreatedKey:
    make_alias("kept", openai_credential, "gpt-image-1", free=True)
    return key_create(actor=ACTOR, team=team, name="app")


def _post(base: str, secret: str, stream: bool = False) -> str | None:
    """The request id of a complete 200 answer; None if the answer never came whole."""
    body = {"model": "kept", "prompt": "a fox", "size": "1024x1024"}
    try:
        response = requests.post(
            f"{base}/v1/images/generations",
            data=json.dumps({**body, "stream": True, "partial_images": 1} if stream else body),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            timeout=30,
        )
        if stream:  # whole only with its last chunk: else the read fails
            assert b"image_generation.completed" in response.content
        else:
            response.json()
    except (requests.RequestException, ValueError, AssertionError):
        return None
    return response.headers["x-request-id"] if response.status_code == 200 else None


def _waiting_inserts(database: psycopg.Connection) -> int:
    row = database.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE 'INSERT INTO billing_usagerecord%%'"
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_worker_killed_under_load_loses_no_record_of_an_answer_it_completed(
    server: Server, key: CreatedKey, fake_upstream: FakeUpstream, stream: bool
) -> None:
    answered = [_post(server, key.secret, stream) for _ in range(BEFORE)]
    assert None not in answered
    database_url = subprocess_database_url()
    with (
        psycopg.connect(database_url) as lock,
        psycopg.connect(database_url, autocommit=True) as watch,
    ):
        # Records can't be written now: the worker's INSERT waits on the lock.
        lock.execute("LOCK TABLE billing_usagerecord IN EXCLUSIVE MODE")
        with ThreadPoolExecutor(max_workers=DURING) as pool:
            during = [pool.submit(_post, server, key.secret, stream) for _ in range(DURING)]
            wait_for(
                lambda: (
                    len(fake_upstream.requests) == BEFORE + DURING and _waiting_inserts(watch) > 0
                ),
                what="every call answered upstream and a record waiting on the lock",
            )
            (worker,) = server.worker_pids()
            os.kill(worker, signal.SIGKILL)
            lock.rollback()
            answered += [future.result() for future in during]
    completed = {request_id for request_id in answered if request_id is not None}
    recorded = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert len(completed) >= BEFORE
    assert completed <= recorded, f"answers without a record: {completed - recorded}"
    # The master's next worker serves on (and stops at once at teardown once it is up).
    wait_for(
        lambda: server.worker_pids() not in ([], [worker]) and bool(_post(server, key.secret)),
        what="the next worker serving",
    )
