"""/metrics: counters equal the traffic sent, summed over gunicorn workers; who may scrape."""

import importlib.util
import json
import os
import re
import signal
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings
from django.test import Client, override_settings
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from aperture import metrics
from billing.models import Budget, Price
from routing import health
from routing import services as routing_services
from routing.models import ModelAlias, Provider, ProviderCredential
from tenants import services
from tenants.models import Team
from tenants.services import CreatedKey
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream, Misbehave
from tests.support import ROOT, Server, gunicorn, subprocess_database_url, wait_for

URL = "/v1/images/generations"
TOKEN = "metrics-token-0123456789"
PROMPT = "a lighthouse painted for the metrics test"
PRICE_MICRO = 1_500
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(_key(name, **labels), 0.0)


# --- in one process: who may scrape, what is read at scrape time -------------------------


def _scrape() -> Samples:
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return _parse(response.content.decode())


@override_settings(METRICS_TOKEN="")
@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_a_loopback_caller_may_scrape(db: None, address: str) -> None:
    assert Client().get("/metrics", REMOTE_ADDR=address).status_code == 200


@override_settings(METRICS_TOKEN="")
@pytest.mark.parametrize(
    ("address", "headers"),
    [
        ("10.1.2.3", {}),
        ("192.168.0.7", {}),
        ("2001:db8::1", {}),
        ("", {}),  # a Unix socket: a proxy in front
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}),  # a proxy on this host
        ("127.0.0.1", {"Forwarded": "for=203.0.113.9"}),
        ("127.0.0.1", {"X-Real-IP": "203.0.113.9"}),
        ("127.0.0.1", {"Via": "1.1 proxy"}),
        ("127.0.0.1", {"X-Forwarded-Port": "443"}),  # any X-Forwarded-*
    ],
)
def test_without_a_token_any_other_caller_is_refused(
    db: None, address: str, headers: dict[str, str]
) -> None:
    response = Client().get("/metrics", headers=headers, REMOTE_ADDR=address)
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "message": "/metrics answers loopback callers only; set APERTURE_METRICS_TOKEN to "
            "scrape it from elsewhere.",
            "type": "permission_error",
            "param": None,
            "code": "metrics_loopback_only",
        }
    }


@override_settings(METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
def test_with_a_token_a_scrape_without_it_is_refused_even_from_loopback(
    db: None, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = Client().get("/metrics", headers=headers, REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="aperture-metrics"'
    assert response.json()["error"]["code"] == "invalid_metrics_token"


@override_settings(METRICS_TOKEN=TOKEN)
def test_with_a_token_a_scrape_that_presents_it_is_served_from_anywhere(db: None) -> None:
    response = Client().get(
        "/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"
    )
    assert response.status_code == 200
    assert "aperture_budget_holds_in_flight" in response.content.decode()


@override_settings(METRICS_TOKEN="")
def test_an_openmetrics_scraper_gets_openmetrics(db: None) -> None:
    response = Client().get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_ACCEPT="application/openmetrics-text"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")


@override_settings(METRICS_ENABLED=False, METRICS_TOKEN="")
def test_switched_off_nothing_is_counted_and_metrics_is_a_404(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    labels = {"route": "images.generations", "status": "200", "alias": "demo-image"}
    labels["provider"] = "local"
    before = metrics.REGISTRY.get_sample_value("aperture_requests_total", labels) or 0.0
    body = {"model": "demo-image", "prompt": PROMPT, "size": "256x256"}
    assert client.post(URL, body, format="json").status_code == 200
    assert (metrics.REGISTRY.get_sample_value("aperture_requests_total", labels) or 0.0) == before
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@override_settings(METRICS_TOKEN="")
def test_each_enabled_deployments_circuit_state_is_read_at_scrape_time(
    platform_alias: ModelAlias, local_credential: ProviderCredential
) -> None:
    healthy = platform_alias.deployments.get()
    sick = routing_services.deployment_create(
        actor=ACTOR,
        alias=platform_alias,
        credential=local_credential,
        upstream_model="local-image",
        priority=1,
    )
    off = routing_services.deployment_create(
        actor=ACTOR,
        alias=platform_alias,
        credential=local_credential,
        upstream_model="local-image",
        priority=2,
        enabled=False,
    )
    health.force_open(sick.pk, 60)
    health.failed(healthy.pk, "HTTP 500")
    samples = _scrape()
    states = {
        (dict(labels)["deployment"], dict(labels)["state"]): value
        for (name, labels), value in samples.items()
        if name == "aperture_deployment_circuit_state"
    }
    assert states == {
        (str(healthy.pk), "closed"): 1.0,
        (str(healthy.pk), "open"): 0.0,
        (str(healthy.pk), "half-open"): 0.0,
        (str(sick.pk), "closed"): 0.0,
        (str(sick.pk), "open"): 1.0,
        (str(sick.pk), "half-open"): 0.0,
    }
    assert str(off.pk) not in {deployment for deployment, _ in states}
    labels = {"deployment": str(healthy.pk), "alias": "demo-image", "provider": "local"}
    assert _value(samples, "aperture_deployment_circuit_failures", **labels) == 1.0


@contextmanager
def _queue(name: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = [name, *(f"{name}\x06\x16{step}" for step in (3, 6, 9))]
    try:
        yield client
    finally:
        client.delete(*keys)
        client.close()


def test_the_celery_queue_depth_is_read_from_the_broker_at_scrape_time(db: None) -> None:
    queue = f"metrics-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with (
        _queue(queue) as broker,
        override_settings(
            METRICS_TOKEN="",
            CELERY_TASK_ALWAYS_EAGER=False,
            CELERY_BROKER_URL=settings.REDIS_URL,
            METRICS_CELERY_QUEUES=[queue],
        ),
    ):
        broker.rpush(queue, "a", "b", "c")
        broker.rpush(f"{queue}\x06\x166", "prioritised")  # kombu's list for priority 6
        samples = _scrape()
        assert _value(samples, "aperture_celery_queue_depth", queue=queue) == 4.0
        broker.lpop(queue)
        assert _value(_scrape(), "aperture_celery_queue_depth", queue=queue) == 3.0


@override_settings(METRICS_TOKEN="", CELERY_TASK_ALWAYS_EAGER=True)
def test_with_eager_tasks_there_is_no_queue_to_report(db: None) -> None:
    assert not [name for name, _ in _scrape() if name == "aperture_celery_queue_depth"]


@override_settings(METRICS_TOKEN="")
def test_a_failed_upstream_call_is_counted_on_its_deployment_by_class(
    client: APIClient,
    openai_credential: ProviderCredential,
    local_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    alias = routing_services.alias_create(actor=ACTOR, name="fallback-metrics")
    first = routing_services.deployment_create(
        actor=ACTOR, alias=alias, credential=openai_credential, upstream_model="gpt-image-1"
    )
    routing_services.deployment_create(
        actor=ACTOR,
        alias=alias,
        credential=local_credential,
        upstream_model="local-image",
        priority=1,
    )
    errors = {"deployment": str(first.pk), "provider": "openai", "class": "failed"}
    served = {"route": "images.generations", "status": "200", "alias": "fallback-metrics"}
    served["provider"] = "local"
    before = _scrape()
    fake_upstream.misbehave(Misbehave(status=500, body={"error": {"message": "down"}}))
    body = {"model": "fallback-metrics", "prompt": PROMPT, "size": "1024x1024", "quality": "low"}
    response = client.post(URL, body, format="json")
    assert (response.status_code, response["x-aperture-attempt"]) == (200, "2")
    after = _scrape()
    for name, labels in (
        ("aperture_upstream_errors_total", errors),
        ("aperture_requests_total", served),
    ):
        assert _value(after, name, **labels) - _value(before, name, **labels) == 1.0
    upstream = {"alias": "fallback-metrics", "provider": "local"}
    assert (
        _value(after, "aperture_upstream_duration_seconds_count", **upstream)
        - _value(before, "aperture_upstream_duration_seconds_count", **upstream)
        == 1.0
    )


def test_an_unwritten_usage_record_is_counted(
    client: APIClient, platform_alias: ModelAlias, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing import metering

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(metering, "_insert", refuse)
    name = "aperture_usage_record_write_failures_total"
    before = metrics.REGISTRY.get_sample_value(name) or 0.0
    body = {"model": "demo-image", "prompt": PROMPT, "size": "256x256"}
    assert client.post(URL, body, format="json").status_code == 200
    assert metrics.REGISTRY.get_sample_value(name) == before + 1


def test_gunicorn_forgets_an_exited_worker_s_live_gauges_as_prometheus_client_does() -> None:
    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        spec.loader.exec_module(conf)
    finally:  # loading it sets the variable for a gunicorn master; this is none
        if saved is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    assert set(conf._LIVE_GAUGE_MODES) == multiprocess._LIVE_GAUGE_MULTIPROCESS_MODES


# --- a live gunicorn with 2 workers -------------------------------------------------------


@contextmanager
def _paused(pid: int) -> Iterator[None]:
    """A stopped worker accepts nothing: every new connection goes to the other one."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _post(server: Server, secret: str, model: str = "priced-local") -> requests.Response:
    return requests.post(
        f"{server}{URL}",
        json={"model": model, "prompt": PROMPT, "size": "256x256"},
        headers={"Authorization": f"Bearer {secret}", "Connection": "close"},
        timeout=30,
    )


def _statuses(server: Server, secret: str, count: int, model: str = "priced-local") -> list[int]:
    return [_post(server, secret, model).status_code for _ in range(count)]


def _live_scrape(server: Server) -> tuple[str, Samples]:
    response = requests.get(
        f"{server}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.text, _parse(response.text)


def _one_worker(directory: Path, pid: int) -> Samples:
    """What one worker's own files say (the scrape adds every worker's up)."""
    files = [str(path) for path in directory.glob(f"*_{pid}.db")]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in multiprocess.MultiProcessCollector.merge(files)
        for sample in family.samples
    }


@pytest.fixture
def keys(team: Team, local_credential: ProviderCredential) -> dict[str, CreatedKey]:
    """A priced alias on the local provider, and keys that are served, refused by a budget
    (402) and refused by a rate limit of one request a minute (429)."""
    local_credential.free = False
    local_credential.save()
    Price.objects.create(provider="local", model_pattern="local-image", per_image_micro=PRICE_MICRO)
    alias = routing_services.alias_create(actor=ACTOR, name="priced-local")
    routing_services.deployment_create(
        actor=ACTOR, alias=alias, credential=local_credential, upstream_model="local-image"
    )
    created = {
        "plain": services.key_create(actor=ACTOR, team=team, name="plain"),
        "broke": services.key_create(actor=ACTOR, team=team, name="broke"),
        "limited": services.key_create(actor=ACTOR, team=team, name="limited", rpm_limit=1),
    }
    for name, limit in (("plain", 10**9), ("broke", PRICE_MICRO - 1)):
        Budget.objects.create(
            scope="key",
            workspace=team.workspace,
            team=team,
            key=created[name].key,
            period="month",
            limit_micro=limit,
        )
    return created


@pytest.fixture
def two_workers(django_db_setup: None, django_db_blocker) -> Iterator[tuple[Server, Path]]:
    with django_db_blocker.unblock():
        database_url = subprocess_database_url()
    with tempfile.TemporaryDirectory(prefix="prometheus-") as directory:
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL,
            "APERTURE_METRICS_TOKEN": TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": directory,
            # One socket shared by both workers, so that pausing one sends every connection to
            # the other (`_paused`); with a socket each, the paused one's share would wait.
            "APERTURE_REUSE_PORT": "false",
        }
        with gunicorn(env, workers=2) as server:
            wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
            yield server, Path(directory)


@pytest.mark.django_db(transaction=True)
def test_counters_equal_the_traffic_sent_summed_over_two_workers(
    two_workers: tuple[Server, Path], keys: dict[str, CreatedKey]
) -> None:
    server, directory = two_workers
    first, second = server.worker_pids()
    plain, broke, limited = (keys[k].secret for k in ("plain", "broke", "limited"))
    with _paused(second):  # the first worker serves all of these
        assert _statuses(server, plain, 3) == [200] * 3
        assert _statuses(server, broke, 2) == [402] * 2
        assert _statuses(server, limited, 3) == [200, 429, 429]
    with _paused(first):  # and the second all of these
        assert _statuses(server, plain, 2) == [200] * 2
        assert _statuses(server, broke, 1) == [402]
        assert _statuses(server, limited, 2) == [429] * 2
        assert _statuses(server, "apk_not-a-key-0123456789", 1) == [401]
        assert _statuses(server, plain, 1, model="secret-model-name-7f3a") == [404]

    route = {"route": "images.generations"}
    served = {**route, "alias": "priced-local", "provider": "local"}
    unresolved = {**route, "alias": "", "provider": ""}  # no key, or no such model
    expected = {
        _key("aperture_requests_total", **served, status="200"): 6.0,
        _key("aperture_requests_total", **served, status="402"): 3.0,
        _key("aperture_requests_total", **served, status="429"): 4.0,
        _key("aperture_requests_total", **unresolved, status="401"): 1.0,
        _key("aperture_requests_total", **unresolved, status="404"): 1.0,
        _key("aperture_images_total", **served): 6.0,
        _key("aperture_cost_micro_usd_total", **served): 6.0 * PRICE_MICRO,
        _key("aperture_budget_refusals_total", **served): 3.0,
        _key("aperture_rate_limit_refusals_total", **served): 4.0,
        _key("aperture_budget_holds_in_flight"): 0.0,
        _key("aperture_usage_record_write_failures_total"): 0.0,
    }
    counted = {name for name, _ in expected}  # every series of these, and nothing else

    def answers_counted() -> float:  # an answer is counted once it is out (routing/metered.py)
        samples = _live_scrape(server)[1]
        return sum(v for (name, _), v in samples.items() if name == "aperture_requests_total")

    wait_for(lambda: answers_counted() >= 15, what="the 15 answers counted")
    text, samples = _live_scrape(server)
    assert {key: value for key, value in samples.items() if key[0] in counted} == expected
    durations = "aperture_request_duration_seconds_count"
    assert _value(samples, durations, **route, alias="priced-local") == 6 + 3 + 4
    assert _value(samples, durations, **route, alias="") == 2.0
    upstream = {"alias": "priced-local", "provider": "local"}
    assert _value(samples, "aperture_upstream_duration_seconds_count", **upstream) == 6.0
    # Each worker's own files hold what it served: the scrape is their sum.
    ok = _key("aperture_requests_total", **served, status="200")
    assert (_one_worker(directory, first)[ok], _one_worker(directory, second)[ok]) == (4.0, 2.0)
    for secret in (PROMPT, plain, broke, limited, "not-a-key", "secret-model-name", TOKEN):
        assert secret not in text


def test_a_scrape_without_the_token_is_refused(two_workers: tuple[Server, Path]) -> None:
    server, _ = two_workers
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        response = requests.get(f"{server}/metrics", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_metrics_token"
        assert "aperture_" not in response.text


@pytest.mark.django_db(transaction=True)
def test_a_hold_in_flight_shows_and_a_dead_worker_s_hold_goes_with_it_while_its_counts_stay(
    two_workers: tuple[Server, Path], keys: dict[str, CreatedKey], team: Team
) -> None:
    server, directory = two_workers
    first, second = server.worker_pids()
    plain = keys["plain"].secret
    with FakeUpstream(delay=0) as slow:
        slow.misbehave(Misbehave(delay=60))
        credential = routing_services.credential_create(
            actor=ACTOR,
            name="slow",
            provider=Provider.OPENAI,
            base_url=slow.url,
            secret="sk-slow",
            free=True,
        )
        alias = routing_services.alias_create(actor=ACTOR, name="slow-image")
        routing_services.deployment_create(
            actor=ACTOR, alias=alias, credential=credential, upstream_model="dall-e-2"
        )

        def holds() -> float:
            return _value(_live_scrape(server)[1], "aperture_budget_holds_in_flight")

        with ThreadPoolExecutor(1) as pool:
            with _paused(second):
                assert _statuses(server, plain, 2) == [200] * 2
                hung = pool.submit(_post, server, plain, "slow-image")
                wait_for(lambda: holds() == 1.0, what="the hold in flight")
            assert (directory / f"gauge_livesum_{first}.db").exists()
            os.kill(first, signal.SIGKILL)  # the worker dies holding it
            with pytest.raises(requests.ConnectionError):
                hung.result(timeout=30)
        # The master reaps it and drops its live gauges; its counter files stay.
        gauge = directory / f"gauge_livesum_{first}.db"
        wait_for(lambda: not gauge.exists(), what="the dead worker's gauge dropped")
        assert (directory / f"counter_{first}.db").exists()
        assert holds() == 0.0
        ok = {"route": "images.generations", "status": "200"}
        ok |= {"alias": "priced-local", "provider": "local"}
        assert _value(_live_scrape(server)[1], "aperture_requests_total", **ok) == 2.0


def test_the_grafana_dashboard_asks_only_for_metrics_the_gateway_serves(
    platform_alias: ModelAlias,
) -> None:
    # Every series name of the request metrics (with or without samples yet), and what the
    # scrape reads at scrape time.
    served = {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(
            family.type, ("",)
        )
    }
    with _queue("metrics-dashboard") as broker:
        broker.rpush("metrics-dashboard", "a")
        with override_settings(
            METRICS_TOKEN="",
            CELERY_TASK_ALWAYS_EAGER=False,
            CELERY_BROKER_URL=settings.REDIS_URL,
            METRICS_CELERY_QUEUES=["metrics-dashboard"],
        ):
            served |= {name for name, _ in _scrape()}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\baperture_[a-z_]+", target["expr"])
    }
    assert len(asked) >= 10
    assert asked <= served, asked - served
