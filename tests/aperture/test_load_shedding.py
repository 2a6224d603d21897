"""Load shedding: past its capacity a process answers 503 `overloaded` with Retry-After,
before anything is held or called; a database pool that times out is the same 503, never a
500."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.db import connection
from django.db.utils import OperationalError
from psycopg_pool import PoolTimeout
from rest_framework.test import APIClient

from aperture.errors import exception_handler
from billing.models import Budget, UsageRecord
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.billing.conftest import budget, priced_alias  # noqa: F401 - fixture
from tests.fakes.upstream import FakeUpstream
from tests.support import gunicorn, subprocess_database_url, wait_for

BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024"}


def _generation_poster(base: str, api_key: CreatedKey) -> Callable[[int], requests.Response]:
    """One generation of BODY against the server at `base` (the argument: pool.map's item)."""

    def one(_: int) -> requests.Response:
        return requests.post(
            f"{base}/v1/images/generations",
            json=BODY,
            headers={"Authorization": f"Bearer {api_key.secret}"},
            timeout=60,
        )

    return one


@pytest.mark.django_db
def test_past_its_capacity_a_process_sheds_with_503_overloaded_but_answers_health(
    client: APIClient, settings: Any
) -> None:
    settings.MAX_IN_FLIGHT = 0
    refused = client.post("/v1/images/generations", BODY, format="json")
    assert refused.status_code == 503
    assert refused["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 200  # polls and lists are not shed


def test_a_database_pool_that_times_out_is_a_503_overloaded() -> None:
    wrapped = OperationalError("couldn't get a connection after 10.00 sec")
    wrapped.__cause__ = PoolTimeout("couldn't get a connection after 10.00 sec")
    for error in (wrapped, PoolTimeout("couldn't get a connection")):
        answer = exception_handler(error, {})
        assert answer.status_code == 503
        assert answer.data["error"]["code"] == "overloaded"
        assert answer["Retry-After"] == "1"


@pytest.mark.django_db(transaction=True)
def test_a_burst_past_the_limit_is_shed_before_any_hold_or_upstream_call(
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811 - the fixture
    fake_upstream: FakeUpstream,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the server needs PostgreSQL")
    row = budget(workspace=api_key.key.workspace, period="month", limit_micro=10_000_000)
    fake_upstream.delay = 2.0
    env = {"DATABASE_URL": subprocess_database_url(), "APERTURE_MAX_IN_FLIGHT": "5"}
    with gunicorn(env, workers=1) as base:
        one = _generation_poster(base, api_key)

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(one, range(20)))
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        # Capacity again once the burst is served.
        assert one(0).status_code == 200
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [503] * 15, [a.text for a in answers if a.status_code >= 500]
    shed = [a for a in answers if a.status_code == 503]
    assert {a.json()["error"]["code"] for a in shed} == {"overloaded"}
    assert {a.headers["Retry-After"] for a in shed} == {"1"}
    assert len(fake_upstream.requests) == 6
    row = Budget.objects.get(pk=row.pk)
    assert row.reserved_micro == 0
    assert UsageRecord.objects.filter(status=200).count() == 6
    assert row.used_micro == sum(UsageRecord.objects.values_list("cost_micro", flat=True))


class _Stopped(BaseException):
    """What stops a greenlet outright (its GreenletExit, a gevent.Timeout)."""


@pytest.mark.django_db
def test_a_request_whose_answer_fails_after_its_view_or_never_comes_stops_counting(
    client: APIClient,
    priced_alias: ModelAlias,  # noqa: F811 - the fixture
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted in flight until its response is closed: the response the server closes may
    be another (a 500 made of a failure past the view), or there may be none at all. A
    place never given back is capacity lost for the life of the process."""
    from django.middleware.security import SecurityMiddleware

    from aperture.load_shedding import GATE
    from routing.images_api import ImageGenerationView
    from routing.metered import MeteredView

    def fails(*args: Any) -> None:
        raise RuntimeError("a failure past the view")

    client.raise_request_exception = False
    # Past the view, in a middleware: the view's response is dropped for a 500.
    kept = SecurityMiddleware.process_response
    monkeypatch.setattr(SecurityMiddleware, "process_response", fails)
    assert client.post("/v1/images/generations", BODY, format="json").status_code == 500
    assert GATE.in_flight == 0
    monkeypatch.setattr(SecurityMiddleware, "process_response", kept)
    # In the view's own finishing of its response.
    monkeypatch.setattr(MeteredView, "_metered", fails)
    assert client.post("/v1/images/generations", BODY, format="json").status_code == 500
    assert GATE.in_flight == 0

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise _Stopped

    monkeypatch.setattr(ImageGenerationView, "post", stopped)
    with pytest.raises(_Stopped):
        client.post("/v1/images/generations", BODY, format="json")
    assert GATE.in_flight == 0


@pytest.mark.django_db
def test_a_request_stops_counting_once_its_response_is_closed(
    client: APIClient,
    priced_alias: ModelAlias,  # noqa: F811 - the fixture
    fake_upstream: FakeUpstream,
) -> None:
    from aperture.load_shedding import GATE

    served = client.post("/v1/images/generations", BODY, format="json")
    refused = client.post("/v1/images/generations", {**BODY, "n": 0}, format="json")
    assert (served.status_code, refused.status_code) == (200, 400)
    assert GATE.in_flight == 0


def test_work_slots_take_turns_step_out_for_the_network_and_shed_a_long_wait(
    settings: Any,
) -> None:
    from aperture.errors import Overloaded
    from aperture.load_shedding import WorkSlots

    settings.WORK_SLOTS, settings.WORK_WAIT_SECONDS = 1, 0.2
    slots = WorkSlots()
    outcomes: list[str] = []

    def another() -> None:
        try:
            slots.take()
        except Overloaded as refused:
            outcomes.append(f"503 {refused.code}")
            return
        outcomes.append("at work")
        slots.done()

    slots.take()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(another).result()  # the one slot stays taken past the wait
    slots.step_out()  # waiting on the network: the slot is free meanwhile
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(another).result()
    slots.resume()  # back from the network: a slot again
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(another).result()
    slots.done()
    slots.resume()  # done is done: nothing to resume
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(another).result()
    assert outcomes == ["503 overloaded", "at work", "503 overloaded", "at work"]


@pytest.mark.django_db(transaction=True)
def test_one_work_slot_is_given_back_before_the_upstream_call(
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811 - the fixture
    fake_upstream: FakeUpstream,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the server needs PostgreSQL")
    budget(workspace=api_key.key.workspace, period="month", limit_micro=10_000_000)
    fake_upstream.delay = 5.0  # one after another, the second would reach it 5 s late
    env = {"DATABASE_URL": subprocess_database_url(), "APERTURE_WORK_SLOTS": "1"}
    with gunicorn(env, workers=1) as base:
        one = _generation_poster(base, api_key)

        with ThreadPoolExecutor(max_workers=3) as pool:
            answers = pool.map(one, range(3))
            # All three wait on the upstream at once: none held the one slot while it waited.
            wait_for(
                lambda: len(fake_upstream.requests) == 3, timeout=4, what="three upstream calls"
            )
            assert UsageRecord.objects.count() == 0  # none has been answered yet
            statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 200]


def test_a_request_back_from_the_network_takes_the_next_slot_before_newcomers() -> None:
    import threading

    from aperture.load_shedding import _Slots

    slots = _Slots(1)
    assert slots.acquire(resuming=False, timeout=1)
    order: list[str] = []

    def take(name: str, resuming: bool) -> None:
        assert slots.acquire(resuming=resuming, timeout=30)
        order.append(name)
        slots.release()

    newcomer = threading.Thread(target=take, args=("newcomer", False))
    newcomer.start()
    wait_for(lambda: len(slots._waiting[1]) == 1, what="the newcomer in line")
    resumer = threading.Thread(target=take, args=("back from the network", True))
    resumer.start()
    wait_for(lambda: len(slots._waiting[0]) == 1, what="the resumer in line")
    slots.release()
    newcomer.join()
    resumer.join()
    assert order == ["back from the network", "newcomer"]
    assert slots.acquire(resuming=False, timeout=0)  # every slot came back


def test_a_request_killed_while_it_waits_for_a_slot_loses_no_slot(monkeypatch: Any) -> None:
    import threading

    from aperture import load_shedding

    class Killed(BaseException):
        pass

    kill = threading.Event()

    class DoomedWait(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            kill.wait(30)
            raise Killed  # as gevent.Timeout or GreenletExit would, mid-wait

    slots = load_shedding._Slots(1)
    assert slots.acquire(resuming=False, timeout=1)
    monkeypatch.setattr(load_shedding, "Event", DoomedWait)

    def waits_then_dies() -> None:
        with pytest.raises(Killed):
            slots.acquire(resuming=False, timeout=30)

    dying = threading.Thread(target=waits_then_dies)
    dying.start()
    wait_for(lambda: len(slots._waiting[1]) == 1, what="the doomed waiter in line")
    kill.set()
    dying.join()
    assert not slots._waiting[1]
    slots.release()
    assert slots.acquire(resuming=False, timeout=0)  # the slot came back, not to the dead


@pytest.mark.django_db(transaction=True)
def test_a_json_edit_fetching_its_images_holds_no_work_slot(
    api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    """A tenant cannot hold every slot with edits whose image URLs never answer."""
    import socket
    import threading

    if connection.vendor != "postgresql":
        pytest.skip("the server needs PostgreSQL")
    env = {
        "DATABASE_URL": subprocess_database_url(),
        "APERTURE_WORK_SLOTS": "1",
        "APERTURE_FETCH_ALLOWED_HOSTS": "127.0.0.1",
    }
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    with socket.create_server(("127.0.0.1", 0)) as silent, gunicorn(env, workers=1) as base:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/photo.png"
        edit: list[requests.Response] = []

        def post_the_edit() -> None:
            edit.append(
                requests.post(
                    f"{base}/v1/images/edits",
                    json={"model": "demo-image", "prompt": "a hat", "images": [{"image_url": url}]},
                    headers=headers,
                    timeout=60,
                )
            )

        editing = threading.Thread(target=post_the_edit)
        editing.start()
        fetch, _ = silent.accept()  # the gateway is fetching the image: it never gets it
        with fetch:
            quick = requests.post(
                f"{base}/v1/images/generations",
                json={"model": "demo-image", "prompt": "a fox", "size": "64x64"},
                headers=headers,
                timeout=10,
            )
            assert quick.status_code == 200, quick.text
            assert not edit  # the edit is still waiting for its image
        editing.join()
    assert edit[0].status_code == 400, edit[0].text  # the fetch was cut off: the URL's fault


@pytest.mark.django_db
def test_sheds_are_counted_by_reason_and_waiters_are_a_gauge(
    client: APIClient, settings: Any
) -> None:
    import threading

    from aperture import metrics
    from aperture.load_shedding import WorkSlots

    def shed(reason: str) -> float:
        return metrics.REGISTRY.get_sample_value("aperture_shed_total", {"reason": reason}) or 0.0

    def waiters() -> float:
        return metrics.REGISTRY.get_sample_value("aperture_work_slot_waiters") or 0.0

    before = {reason: shed(reason) for reason in ("in_flight", "work_slot")}
    settings.MAX_IN_FLIGHT = 0
    assert client.post("/v1/images/generations", BODY, format="json").status_code == 503
    assert shed("in_flight") == before["in_flight"] + 1

    settings.WORK_SLOTS, settings.WORK_WAIT_SECONDS = 1, 30
    slots = WorkSlots()
    slots.take()
    got_one = threading.Event()

    def waits() -> None:
        slots.take()
        got_one.set()
        slots.done()

    waiting = threading.Thread(target=waits)
    waiting.start()
    wait_for(lambda: waiters() == 1, what="one request waiting for a slot")
    slots.done()
    waiting.join()
    assert got_one.is_set() and waiters() == 0

    settings.WORK_WAIT_SECONDS = 0.05
    slots.take()
    with ThreadPoolExecutor(max_workers=1) as pool:
        refused = pool.submit(slots.take).exception()
    slots.done()
    assert refused is not None and refused.code == "overloaded"  # type: ignore[attr-defined]
    assert shed("work_slot") == before["work_slot"] + 1
    assert waiters() == 0
