"""Deployment health where operators and callers see it: the admin (states, force open and
closed, audited), `manage.py health`, `/v1/models` availability, `/readyz`, and the probes
that close a recovered deployment's circuit."""

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from aperture.celery import app as celery_app
from routing import health, probes, services, tasks
from routing.models import Deployment, ModelAlias, Provider, ProviderCredential
from tenants.models import AuditEvent
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient
from tests.support import free_port

T0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)  # the clock of these tests, where one is frozen


def _credential(
    name: str,
    base_url: str = "https://api.openai.com",
    *,
    provider: str = Provider.OPENAI,
    secret: str = "sk-" + "x" * 20,
) -> ProviderCredential:
    return services.credential_create(
        actor=ACTOR, name=name, provider=provider, base_url=base_url, secret=secret
    )


def _deploy(alias: ModelAlias, credential: ProviderCredential, model: str, **kw: object):
    return services.deployment_create(
        actor=ACTOR,
        alias=alias,
        credential=credential,
        upstream_model=model,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def trio(db: None) -> dict[str, Deployment]:
    """Three deployments of one alias: one forced open for ten minutes, one with two recent
    failures (still closed), one whose cooldown has passed (half-open); the clock frozen ten
    seconds after T0."""
    openai = _credential("openai-main")
    alias = services.alias_create(actor=ACTOR, name="image-prod")
    found = {
        "open": _deploy(alias, openai, "gpt-image-1"),
        "failing": _deploy(alias, openai, "gpt-image-1-mini", priority=1),
        "half-open": _deploy(alias, openai, "dall-e-3", priority=2),
    }
    return found


@pytest.fixture
def clock(trio: dict[str, Deployment]) -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as frozen:
        health.force_open(trio["open"].pk, 600)
        health.failed(trio["failing"].pk, "HTTP 502 from upstream")
        health.failed(trio["failing"].pk, "HTTP 502 from upstream")
        health.force_open(trio["half-open"].pk, 5)
        frozen.shift(timedelta(seconds=10))
        yield frozen


@pytest.fixture
def health_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The deployment ids of each read of the shared health state (the reads still happen)."""
    reads: list[list[int]] = []
    real = health.states

    def counted(ids: list[int]) -> dict[int, health.State]:
        reads.append(list(ids))
        return real(ids)

    monkeypatch.setattr(health, "states", counted)
    return reads


def _cell(row: str, field: str) -> str:
    found = re.search(rf'class="field-{field}[^"]*">(.*?)</t[dh]>', row, re.S)
    assert found, (field, row)
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def _health_rows(html: str) -> list[str]:
    return [r for r in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S) if "field-health" in r]


def _health(row: str) -> tuple[str, str, str]:
    """A table row's health columns: state, failures, last error."""
    return (
        _cell(row, "health_state"),
        _cell(row, "health_failures"),
        _cell(row, "health_last_error"),
    )


# --- the admin ------------------------------------------------------------------------------


def test_the_deployment_list_shows_each_state_with_one_health_read_for_the_page(
    admin_client: Client,
    trio: dict[str, Deployment],
    clock: time_machine.Traveller,
    health_reads: list[list[int]],
) -> None:
    _deploy(trio["open"].alias, trio["open"].credential, "dall-e-2", priority=3)  # healthy
    page = admin_client.get(reverse("admin:routing_deployment_changelist"))
    assert page.status_code == 200
    rows = _health_rows(page.content.decode())
    assert {_cell(row, "upstream_model"): _health(row) for row in rows} == {
        "gpt-image-1": ("open until 2026-01-05 09:40:00 UTC", "0", "-"),
        "gpt-image-1-mini": (
            "closed",
            "2",
            "HTTP 502 from upstream (2026-01-05 09:30:00 UTC)",
        ),
        "dall-e-3": ("half-open", "0", "-"),
        "dall-e-2": ("closed", "0", "-"),
    }
    assert len(health_reads) == 1
    assert sorted(health_reads[0]) == sorted(Deployment.objects.values_list("pk", flat=True))
    assert "Timeouts (connect / read)" in page.content.decode()
    assert "3 s / 120 s" in page.content.decode()


def test_the_alias_form_shows_its_deployments_health_read_only_and_its_routing_policy(
    admin_client: Client,
    trio: dict[str, Deployment],
    clock: time_machine.Traveller,
    health_reads: list[list[int]],
) -> None:
    alias = trio["open"].alias
    page = admin_client.get(reverse("admin:routing_modelalias_change", args=[alias.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert [_health(row) for row in _health_rows(html)] == [  # in priority order
        ("open until 2026-01-05 09:40:00 UTC", "0", "-"),
        ("closed", "2", "HTTP 502 from upstream (2026-01-05 09:30:00 UTC)"),
        ("half-open", "0", "-"),
        ("-", "-", "-"),  # the blank form "Add another" copies
    ]
    assert len(health_reads) == 1
    for field in ("strategy", "max_attempts", "retry_after_timeout"):
        assert f'name="{field}"' in html, field
    for field in ("weight", "timeout_seconds", "connect_timeout_seconds"):
        assert f'name="deployments-0-{field}"' in html, field


def test_the_alias_form_saves_the_routing_policy_and_the_deployments_timeouts(
    admin_client: Client, trio: dict[str, Deployment]
) -> None:
    first = trio["open"]
    alias = first.alias
    form = {
        "name": alias.name,
        "description": "",
        "enabled": "on",
        "strategy": "weighted",
        "max_attempts": "3",
        "retry_after_timeout": "on",
        "deployments-TOTAL_FORMS": "3",
        "deployments-INITIAL_FORMS": "3",
    }
    for index, deployment in enumerate(alias.deployments.order_by("priority")):
        prefix = f"deployments-{index}-"
        form |= {
            f"{prefix}id": str(deployment.pk),
            f"{prefix}alias": str(alias.pk),
            f"{prefix}credential": str(deployment.credential_id),
            f"{prefix}upstream_model": deployment.upstream_model,
            f"{prefix}priority": str(deployment.priority),
            f"{prefix}weight": "5" if deployment == first else "1",
            f"{prefix}timeout_seconds": "90" if deployment == first else "120",
            f"{prefix}connect_timeout_seconds": "1.5" if deployment == first else "3",
            f"{prefix}options": "{}",
            f"{prefix}enabled": "on",
        }
    response = admin_client.post(reverse("admin:routing_modelalias_change", args=[alias.pk]), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    alias.refresh_from_db()
    assert (alias.strategy, alias.max_attempts, alias.retry_after_timeout) == ("weighted", 3, True)
    first.refresh_from_db()
    assert (first.weight, first.timeout_seconds, first.connect_timeout_seconds) == (5, 90, 1.5)
    saved = AuditEvent.objects.get(event="alias.updated", target_id=alias.public_id)
    assert sorted(saved.data["fields"]) == ["max_attempts", "retry_after_timeout", "strategy"]


def _act(admin_client: Client, action: str, deployments: list[Deployment], **more: str):
    return admin_client.post(
        reverse("admin:routing_deployment_changelist"),
        {"action": action, "_selected_action": [d.pk for d in deployments], **more},
        follow=True,
    )


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_force_open_takes_deployments_out_for_the_minutes_given_and_is_audited(
    admin_client: Client, trio: dict[str, Deployment]
) -> None:
    chosen = [trio["failing"], trio["half-open"]]
    with time_machine.travel(T0, tick=False):
        response = _act(admin_client, "force_open", chosen, minutes="30")
        assert _messages(response) == [
            "2 deployment(s) forced open until 2026-01-05 10:00:00 UTC: requests skip them "
            "unless every deployment of their alias is open."
        ]
        found = health.states([d.pk for d in trio.values()])
    until = T0.timestamp() + 1800
    assert {d.upstream_model: found[d.pk].open_until for d in trio.values()} == {
        "gpt-image-1": 0.0,
        "gpt-image-1-mini": until,
        "dall-e-3": until,
    }
    audited = AuditEvent.objects.filter(event="deployment.forced_open").order_by("target_id")
    assert [(a.actor, a.target_type, a.target_id, a.data) for a in audited] == sorted(
        (
            "operator:admin",
            "routing.deployment",
            d.public_id,
            {"seconds": 1800, "health": "shared"},
        )
        for d in chosen
    )


@pytest.mark.parametrize("minutes", ["", "0", "abc", "1441"])
def test_force_open_without_a_usable_number_of_minutes_changes_nothing(
    admin_client: Client, trio: dict[str, Deployment], minutes: str
) -> None:
    response = _act(admin_client, "force_open", [trio["failing"]], minutes=minutes)
    assert _messages(response) == [
        "Give the minutes to force open, 1 to 1440 (longer: disable the deployment). "
        "Nothing was changed."
    ]
    assert health.states([trio["failing"].pk])[trio["failing"].pk].open_until == 0.0
    assert not AuditEvent.objects.filter(event="deployment.forced_open").exists()


def test_force_closed_puts_a_deployment_back_into_rotation_and_forgets_its_failures(
    admin_client: Client, trio: dict[str, Deployment], clock: time_machine.Traveller
) -> None:
    chosen = [trio["open"], trio["failing"]]
    response = _act(admin_client, "force_closed", chosen)
    assert _messages(response) == [
        "2 deployment(s) forced closed: back in rotation, failures forgotten."
    ]
    found = health.states([d.pk for d in trio.values()])
    assert {
        d.upstream_model: (found[d.pk].status(T0.timestamp() + 10), found[d.pk].failures)
        for d in trio.values()
    } == {
        "gpt-image-1": (health.CLOSED, 0),
        "gpt-image-1-mini": (health.CLOSED, 0),
        "dall-e-3": (health.HALF_OPEN, 0),
    }
    audited = AuditEvent.objects.filter(event="deployment.forced_closed")
    assert sorted((a.actor, a.target_id, a.data["health"]) for a in audited) == sorted(
        ("operator:admin", d.public_id, "shared") for d in chosen
    )


def test_forcing_open_is_bounded_and_a_refusal_writes_nothing(trio: dict[str, Deployment]) -> None:
    for seconds in (0, -5, services.FORCE_OPEN_MAX_SECONDS + 1):
        with pytest.raises(ValidationError):
            services.deployment_force_open(actor=ACTOR, deployment=trio["open"], seconds=seconds)
    assert not AuditEvent.objects.filter(event="deployment.forced_open").exists()
    assert health.states([trio["open"].pk])[trio["open"].pk].open_until == 0.0


# --- manage.py health -----------------------------------------------------------------------


def test_the_health_command_prints_every_enabled_deployment_and_the_mode(
    trio: dict[str, Deployment], clock: time_machine.Traveller
) -> None:
    off = _deploy(trio["open"].alias, trio["open"].credential, "dall-e-2", enabled=False)
    health.force_open(off.pk, 600)  # disabled: not listed
    out, err = io.StringIO(), io.StringIO()
    call_command("health", stdout=out, stderr=err)
    assert out.getvalue().splitlines() == [
        "ALIAS                  CREDENTIAL   PROVIDER  MODEL             STATE"
        "                               FAILURES  LAST ERROR",
        "image-prod (platform)  openai-main  openai    gpt-image-1       open until "
        "2026-01-05 09:40:00 UTC  0         -",
        "image-prod (platform)  openai-main  openai    gpt-image-1-mini  closed"
        "                              2         HTTP 502 from upstream",
        "image-prod (platform)  openai-main  openai    dall-e-3          half-open"
        "                           0         -",
        "health mode: shared",
    ]
    assert err.getvalue() == ""


def test_the_health_command_warns_that_without_redis_it_sees_only_itself(
    db: None, settings: SettingsWrapper
) -> None:
    settings.RATE_LIMIT_REDIS_URL = ""
    out, err = io.StringIO(), io.StringIO()
    call_command("health", stdout=out, stderr=err)
    assert out.getvalue().splitlines()[-2:] == [
        "(no enabled deployment)",
        "health mode: per-process",
    ]
    assert "this table shows this command's process only" in err.getvalue()


# --- /v1/models and /readyz -----------------------------------------------------------------


@pytest.fixture
def pair(db: None) -> list[Deployment]:
    openai = _credential("openai-main")
    alias = services.alias_create(actor=ACTOR, name="image-pair")
    return [
        _deploy(alias, openai, "gpt-image-1"),
        _deploy(alias, openai, "gpt-image-1-mini", priority=1),
    ]


def test_a_model_is_unavailable_while_every_deployment_is_open_and_back_once_one_closes(
    client: APIClient,
    admin: SchemaCheckedClient,
    pair: list[Deployment],
    platform_alias: ModelAlias,
    health_reads: list[list[int]],
) -> None:
    healthy = client.get("/v1/models/image-pair").json()
    assert healthy["aperture"]["available"] is True
    unavailable = {**healthy, "aperture": {**healthy["aperture"], "available": False}}

    health.force_open(pair[0].pk, 600)
    assert client.get("/v1/models/image-pair").json() == healthy  # one still closed
    health.force_open(pair[1].pk, 600)
    assert client.get("/v1/models/image-pair").json() == unavailable
    health_reads.clear()
    listed = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["aperture"]["available"]) for m in listed] == [
        ("demo-image", True),
        ("image-pair", False),
    ]
    assert len(health_reads) == 1  # the whole list: one read of the shared state
    aliases = admin.get("/api/v1/aliases").json()["data"]
    assert [(a["name"], a["available"]) for a in aliases] == [
        ("demo-image", True),
        ("image-pair", False),
    ]

    health.closed(pair[1].pk)
    assert client.get("/v1/models/image-pair").json() == healthy


def test_a_half_open_deployment_keeps_its_model_available(
    client: APIClient, pair: list[Deployment]
) -> None:
    with time_machine.travel(T0, tick=False) as frozen:
        for deployment in pair:
            health.force_open(deployment.pk, 60)
        assert client.get("/v1/models/image-pair").json()["aperture"]["available"] is False
        frozen.shift(timedelta(seconds=61))
        assert client.get("/v1/models/image-pair").json()["aperture"]["available"] is True


def test_readyz_says_deployment_health_is_shared_through_redis(db: None) -> None:
    response = Client().get("/readyz")
    assert (response.status_code, response.json()["deployment_health"]) == (200, "shared")


def test_readyz_says_deployment_health_is_per_process_without_redis(
    db: None, settings: SettingsWrapper
) -> None:
    settings.RATE_LIMIT_REDIS_URL = ""
    response = Client().get("/readyz")
    assert (response.status_code, response.json()["deployment_health"]) == (200, "per-process")


# --- probes ---------------------------------------------------------------------------------


def test_a_probe_closes_an_open_deployment_whose_credential_answers_and_leaves_the_others(
    fake_upstream: FakeUpstream, openai_credential: ProviderCredential
) -> None:
    alias = services.alias_create(actor=ACTOR, name="image-prod")
    recovered = _deploy(alias, openai_credential, "gpt-image-1")
    also_recovered = _deploy(alias, openai_credential, "gpt-image-1-mini", priority=1)
    dead_host = _credential("openai-dead", f"http://127.0.0.1:{free_port()}")
    dead = _deploy(alias, dead_host, "gpt-image-1", priority=2)
    refused_key = _credential("openai-revoked", fake_upstream.url, secret="sk-revoked-00000000")
    refused = _deploy(alias, refused_key, "gpt-image-1", priority=3)
    healthy_key = _credential("openai-fine", fake_upstream.url, secret="sk-fine-0000000000")
    healthy = _deploy(alias, healthy_key, "gpt-image-1", priority=4)  # closed: not probed
    no_check = _credential("ark", fake_upstream.url, provider=Provider.SEEDREAM)
    unprobed = _deploy(alias, no_check, "seedream-4-0-250828", priority=5)
    for deployment in (recovered, dead, refused, unprobed):
        for _ in range(settings.HEALTH_FAILURE_THRESHOLD):
            health.failed(deployment.pk, "HTTP 503")
    health.force_open(also_recovered.pk, 600)

    done = sorted(probes.open_deployments_probe(), key=lambda p: p.credential)

    assert [(p.credential, p.deployment_ids, p.ok) for p in done] == [
        ("openai-dead", (dead.pk,), False),
        ("openai-main", (recovered.pk, also_recovered.pk), True),
        ("openai-revoked", (refused.pk,), False),
    ]
    assert done[0].message.startswith("openai could not be reached")
    assert done[1].message == "The provider accepted the credential."
    assert done[2].message == "openai: Incorrect API key provided."
    called = sorted((r.method, r.path, r.headers["authorization"]) for r in fake_upstream.requests)
    assert called == [
        ("GET", "/v1/models", f"Bearer {UPSTREAM_SECRET}"),
        ("GET", "/v1/models", "Bearer sk-revoked-00000000"),
    ]
    found = health.states([d.pk for d in (recovered, also_recovered, dead, refused, healthy)])
    now = datetime.now(tz=UTC).timestamp()
    found |= health.states([unprobed.pk])
    assert {pk: state.status(now) for pk, state in found.items()} == {
        recovered.pk: health.CLOSED,
        also_recovered.pk: health.CLOSED,
        dead.pk: health.OPEN,
        refused.pk: health.OPEN,
        healthy.pk: health.CLOSED,
        unprobed.pk: health.OPEN,
    }
    assert found[recovered.pk].failures == 0  # forgotten, as after a success


def test_probes_are_bounded_per_run(fake_upstream: FakeUpstream, db: None) -> None:
    alias = services.alias_create(actor=ACTOR, name="image-many")
    for index in range(4):
        credential = _credential(f"openai-{index}", fake_upstream.url, secret=UPSTREAM_SECRET)
        health.force_open(_deploy(alias, credential, "gpt-image-1").pk, 600)
    assert len(probes.open_deployments_probe(limit=3)) == 3
    assert len(fake_upstream.requests) == 3
    assert len(probes.open_deployments_probe(limit=3)) == 1  # the one left open


def test_the_probe_task_is_in_the_beat_schedule_and_runs_the_probes(db: None) -> None:
    scheduled = [
        entry
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == "routing.tasks.probe_open_deployments"
    ]
    assert scheduled == [
        {
            "task": "routing.tasks.probe_open_deployments",
            "schedule": settings.HEALTH_PROBE_INTERVAL_SECONDS,
            "options": {"expires": settings.HEALTH_PROBE_INTERVAL_SECONDS},
        }
    ]
    celery_app.loader.import_default_modules()
    assert "routing.tasks.probe_open_deployments" in celery_app.tasks
    assert tasks.probe_open_deployments.apply().get() == 0  # nothing open: nothing called
