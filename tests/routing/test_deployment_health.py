"""Deployment health: circuits shared through Redis, the router's order and retry policy, and
real gateways skipping a sick upstream."""

import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
import time_machine
from django.conf import settings
from django.utils import timezone

from billing.models import UsageRecord
from routing import health, router
from routing import services as routing_services
from routing.models import Deployment, ModelAlias, Provider, ProviderCredential
from routing.providers.base import (
    ImageRequest,
    ProviderError,
    Target,
    UpstreamFailed,
    UpstreamModerated,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimedOut,
)
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave
from tests.support import Server, free_port, gunicorn, subprocess_database_url, wait_for

ASK = {"model": "resilient", "prompt": "a fox", "size": "1024x1024", "quality": "low"}
COOLDOWN = 2.0  # the gateways' first cooldown in these tests (APERTURE_HEALTH_COOLDOWN_SECONDS)


# --- the breaker itself --------------------------------------------------------------------


def test_failures_below_the_threshold_keep_a_circuit_closed_and_the_threshold_opens_it() -> None:
    deployment = 910_001
    for _ in range(settings.HEALTH_FAILURE_THRESHOLD - 1):
        health.failed(deployment, "HTTP 502")
    assert health.states([deployment])[deployment].status(time.time()) == health.CLOSED
    assert health.states([deployment])[deployment].failures == 2
    until = health.failed(deployment, "HTTP 502")
    state = health.states([deployment])[deployment]
    assert state.status(time.time()) == health.OPEN
    assert (state.trips, state.last_error) == (1, "HTTP 502")
    assert until == pytest.approx(time.time() + settings.HEALTH_COOLDOWN_SECONDS, abs=1)


def test_each_trip_doubles_the_cooldown_up_to_the_cap_and_a_success_closes_it() -> None:
    deployment = 910_002
    cooldowns = []
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(7):
            for _ in range(settings.HEALTH_FAILURE_THRESHOLD):
                until = health.failed(deployment, "timeout")
            cooldowns.append(round(until - time.time()))
            clock.shift(timedelta(seconds=until - time.time() + 1))  # half-open now
            assert health.take_trial(deployment, lease_seconds=30)
    base, cap = settings.HEALTH_COOLDOWN_SECONDS, settings.HEALTH_COOLDOWN_MAX_SECONDS
    assert cooldowns == [min(base * 2**n, cap) for n in range(7)]
    health.closed(deployment)
    state = health.states([deployment])[deployment]
    assert (state.status(time.time()), state.trips, state.failures) == (health.CLOSED, 0, 0)


def test_a_half_open_circuit_lets_exactly_one_trial_through_and_its_failure_reopens_it() -> None:
    deployment = 910_003
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(settings.HEALTH_FAILURE_THRESHOLD):
            health.failed(deployment, "HTTP 500")
        clock.shift(timedelta(seconds=settings.HEALTH_COOLDOWN_SECONDS + 1))
        assert health.states([deployment])[deployment].status(time.time()) == health.HALF_OPEN
        assert health.take_trial(deployment, lease_seconds=30)
        assert not health.take_trial(deployment, lease_seconds=30)
        until = health.failed(deployment, "HTTP 500")  # the trial failed: one failure suffices
        assert until - time.time() == pytest.approx(2 * settings.HEALTH_COOLDOWN_SECONDS)


def test_a_429_opens_the_circuit_for_its_retry_after() -> None:
    deployment = 910_004
    with time_machine.travel(timezone.now(), tick=False) as clock:
        router_attempt = _attempt(deployment)
        error = UpstreamRateLimited("openai", "slow down", retry_after="30")
        assert router._failed(router_attempt, error, time.monotonic(), []) is True  # moves on
        clock.shift(timedelta(seconds=29))
        assert health.states([deployment])[deployment].status(time.time()) == health.OPEN
        clock.shift(timedelta(seconds=2))
        assert health.states([deployment])[deployment].status(time.time()) == health.HALF_OPEN


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRejected("openai", "bad size", status=400),
        UpstreamModerated("openai", "refused"),
    ],
)
def test_a_rejected_or_moderated_request_does_not_count_against_the_deployment(
    error: ProviderError,
) -> None:
    deployment = 910_005
    for _ in range(settings.HEALTH_FAILURE_THRESHOLD + 2):
        assert router._failed(_attempt(deployment), error, time.monotonic(), []) is False
    state = health.states([deployment])[deployment]
    assert (state.status(time.time()), state.failures) == (health.CLOSED, 0)


def test_a_read_timeout_moves_on_only_where_the_alias_allows_it() -> None:
    timed_out = UpstreamTimedOut("openai", "no answer")
    assert router._failed(_attempt(910_006), timed_out, time.monotonic(), []) is False
    allowed = _attempt(910_007, retry_after_timeout=True)
    assert router._failed(allowed, timed_out, time.monotonic(), []) is True
    assert router._failed(_attempt(910_008), UpstreamFailed("openai", "502"), 0.0, []) is True


def test_without_redis_each_process_keeps_health_and_readiness_says_so(settings) -> None:
    settings.RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    health._redis.cache_clear()
    try:
        deployment = 910_009
        for _ in range(settings.HEALTH_FAILURE_THRESHOLD):
            health.failed(deployment, "HTTP 503")
        assert health.states([deployment])[deployment].status(time.time()) == health.OPEN
        assert health.mode() == "degraded (per-process)"
    finally:
        health._redis.cache_clear()
        health._redis_down_since[0] = 0.0
        health._local.close(910_009)


# --- the router's order ----------------------------------------------------------------------


def test_weighted_spreads_calls_in_proportion_to_the_weights() -> None:
    attempts = [_attempt(920_000 + weight, weight=weight) for weight in (1, 2, 7)]
    firsts = Counter(router._weighted(attempts)[0].deployment.weight for _ in range(1000))
    for weight, share in ((1, 0.1), (2, 0.2), (7, 0.7)):
        assert abs(firsts[weight] / 1000 - share) <= 0.05, firsts


def test_open_circuits_are_skipped_and_when_all_are_open_the_first_to_cool_is_tried() -> None:
    first, second, third = (_attempt(930_000 + n) for n in range(3))
    plan = router.Plan(alias=ModelAlias(max_attempts=3), attempts=[first, second, third])
    health.force_open(first.deployment.pk, 60)
    assert [a.deployment.pk for a in router.order(plan)] == [930_001, 930_002]
    health.force_open(second.deployment.pk, 30)
    health.force_open(third.deployment.pk, 90)
    (only,) = router.order(plan)
    assert (only.deployment.pk, only.circuit_closed) == (930_001, False)


def test_max_attempts_caps_the_calls_of_a_request() -> None:
    attempts = [_attempt(940_000 + n) for n in range(3)]
    plan = router.Plan(alias=ModelAlias(max_attempts=2), attempts=attempts)
    assert [a.deployment.pk for a in router.order(plan)] == [940_000, 940_001]


def _attempt(deployment_id: int, *, weight: int = 1, retry_after_timeout: bool = False):
    credential = ProviderCredential(name="c", provider=Provider.OPENAI)
    deployment = Deployment(pk=deployment_id, credential=credential, weight=weight)
    target = Target(
        provider="openai",
        credential_name="c",
        base_url="http://127.0.0.1:9",
        secret="",
        upstream_model="gpt-image-1",
        timeout_seconds=1.0,
    )
    return router.Attempt(
        deployment=deployment,
        request=ImageRequest(prompt="x"),
        target=target,
        retry_after_timeout=retry_after_timeout,
    )


# --- real gateways -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateways(django_db_setup: None, django_db_blocker) -> Iterator[tuple[Server, Server]]:
    """Two gateway processes on the same database and Redis, as two nodes would be."""
    with django_db_blocker.unblock():
        database_url = subprocess_database_url()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "APERTURE_HEALTH_COOLDOWN_SECONDS": str(COOLDOWN),
        "APERTURE_HEALTH_FAILURE_THRESHOLD": "3",
    }
    with gunicorn(env) as first, gunicorn(env) as second:
        yield first, second


@pytest.fixture
def sick() -> Iterator[FakeUpstream]:
    with FakeUpstream(expected_secret=UPSTREAM_SECRET) as fake:
        yield fake


def _credential(name: str, url: str) -> ProviderCredential:
    return routing_services.credential_create(
        actor=ACTOR, name=name, provider=Provider.OPENAI, base_url=url, secret=UPSTREAM_SECRET
    )


def _resilient_alias(
    first_url: str, second_url: str, *, retry_after_timeout: bool = False, **first: object
) -> ModelAlias:
    alias = routing_services.alias_create(actor=ACTOR, name="resilient")
    alias.retry_after_timeout = retry_after_timeout
    alias.save()
    for priority, (name, url, extra) in enumerate(
        (("sick", first_url, first), ("well", second_url, {}))
    ):
        routing_services.deployment_create(
            actor=ACTOR,
            alias=alias,
            credential=_credential(name, url),
            upstream_model="gpt-image-1",
            priority=priority,
            **extra,  # type: ignore[arg-type]
        )
    return alias


def _generate(gateway: Server, api_key: CreatedKey) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json=ASK,
        headers={"Authorization": f"Bearer {api_key.secret}"},
        timeout=60,
    )
    return response, time.monotonic() - started


def _the_record() -> UsageRecord:
    """The one usage record, once the gateway has written it (after the response)."""
    wait_for(lambda: UsageRecord.objects.exists(), what="the usage record")
    return UsageRecord.objects.get()


def _posts(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.method == "POST")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_a_hanging_deployment_stops_costing_requests_and_gets_traffic_back_once_it_recovers(
    gateways: tuple[Server, Server],
    api_key: CreatedKey,
    sick: FakeUpstream,
    fake_upstream: FakeUpstream,
) -> None:
    gateway, _ = gateways
    sick.delay = 3.0  # answers after the deployment's 1-s read timeout
    _resilient_alias(sick.url, fake_upstream.url, retry_after_timeout=True, timeout_seconds=1)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _generate(gateway, api_key), range(20)))
    assert [r.status_code for r, _ in answers] == [200] * 20
    # At most the threshold, plus what was already in flight when the circuit opened.
    assert _posts(sick) <= 3 + 3
    late = answers[-8:]
    assert all(r.headers["x-aperture-attempt"] == "1" for r, _ in late)
    assert all(seconds < 0.9 for _, seconds in late), [s for _, s in late]
    wait_for(lambda: UsageRecord.objects.count() == 20, what="the usage records")
    first = UsageRecord.objects.filter(attempts__0__outcome="timeout").first()
    assert first is not None
    assert [a["outcome"] for a in first.attempts] == ["timeout", "ok"]
    assert first.attempts[0]["provider"] == "openai"

    sick.delay = 0.0  # recovered: within one cooldown, a trial finds it and traffic returns
    before = _posts(sick)

    def served_by_the_recovered_one() -> bool:
        assert _generate(gateway, api_key)[0].status_code == 200
        return _posts(sick) > before

    wait_for(served_by_the_recovered_one, timeout=COOLDOWN * 2 + 5, what="the trial")
    assert _posts(sick) == before + 1
    back = _posts(sick)
    for _ in range(3):
        assert _generate(gateway, api_key)[0].headers["x-aperture-attempt"] == "1"
    assert _posts(sick) == back + 3  # the first deployment serves again


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_failures_seen_by_one_gateway_open_the_circuit_for_another(
    gateways: tuple[Server, Server],
    api_key: CreatedKey,
    sick: FakeUpstream,
    fake_upstream: FakeUpstream,
) -> None:
    first, second = gateways
    sick.misbehave(*[Misbehave(status=500, body={"error": {"message": "down"}})] * 3)
    _resilient_alias(sick.url, fake_upstream.url)
    for _ in range(3):
        response, _ = _generate(first, api_key)
        assert (response.status_code, response.headers["x-aperture-attempt"]) == (200, "2")
    assert _posts(sick) == 3
    response, _ = _generate(second, api_key)
    assert (response.status_code, response.headers["x-aperture-attempt"]) == (200, "1")
    assert _posts(sick) == 3  # the second gateway skipped it


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_max_attempts_2_with_three_failing_deployments_makes_exactly_two_calls(
    gateways: tuple[Server, Server], api_key: CreatedKey, sick: FakeUpstream
) -> None:
    gateway, _ = gateways
    sick.misbehave(*[Misbehave(status=503, body={"error": {"message": "busy"}})] * 3)
    alias = routing_services.alias_create(actor=ACTOR, name="resilient")
    credential = _credential("sick", sick.url)
    for priority in range(3):
        routing_services.deployment_create(
            actor=ACTOR,
            alias=alias,
            credential=credential,
            upstream_model="gpt-image-1",
            priority=priority,
        )
    response, _ = _generate(gateway, api_key)
    assert response.status_code == 502
    assert _posts(sick) == 2
    assert [a["outcome"] for a in _the_record().attempts] == ["failed", "failed"]


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An address whose connects hang: a listener that never accepts, its queue full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
@pytest.mark.parametrize("dead", ["closed port", "blackholed connect"])
def test_a_dead_host_fails_over_within_the_connect_timeout(
    gateways: tuple[Server, Server],
    api_key: CreatedKey,
    fake_upstream: FakeUpstream,
    blackhole: str,
    dead: str,
) -> None:
    gateway, _ = gateways
    url = f"http://127.0.0.1:{free_port()}" if dead == "closed port" else blackhole
    _resilient_alias(url, fake_upstream.url, connect_timeout_seconds=0.5, timeout_seconds=30)
    response, seconds = _generate(gateway, api_key)
    assert (response.status_code, response.headers["x-aperture-attempt"]) == (200, "2")
    assert seconds < 3, seconds
    assert _the_record().attempts[0]["outcome"] == "unreachable"


def test_the_failure_window_forgets_old_failures() -> None:
    deployment = 910_010
    with time_machine.travel(timezone.now(), tick=False) as clock:
        health.failed(deployment, "HTTP 500")
        health.failed(deployment, "HTTP 500")
        clock.shift(timedelta(seconds=settings.HEALTH_WINDOW_SECONDS + 1))
        health.failed(deployment, "HTTP 500")
        state = health.states([deployment])[deployment]
        assert (state.status(time.time()), state.failures) == (health.CLOSED, 1)
