"""Operator visibility (#19) under attack: a hostile tenant, a careless operator and a
hostile network against the dashboard, /metrics, spend alerts and the logs. Each test states
what should hold; those that fail demonstrate a defect."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import Client, override_settings
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from aperture.errors import InsufficientQuota
from billing import alert_delivery, alerts, budgets, rollups
from billing import services as billing_services
from billing.models import Budget, HourlyUsage, Price, SpendAlert, UsageRecord
from billing.tasks import deliver_spend_alert, rollup_hourly_usage
from routing.models import ModelAlias
from tenants import services as tenant_services
from tenants import webhook_secrets
from tenants.key_auth import authenticate_secret
from tenants.models import Team, Workspace
from tenants.services import CreatedKey, key_create
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient
from tests.support import ROOT, VENV_BIN, subprocess_database_url, wait_for

NOW = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
URL = "/v1/images/generations"
Delivery = SpendAlert.Delivery


def _budget(**fields: Any) -> Budget:
    scope = "key" if fields.get("key") else "team" if fields.get("team") else "workspace"
    return Budget.objects.create(scope=scope, **fields)


def _charge(secret: str, micro: int, images: int = 1) -> None:
    principal = authenticate_secret(secret)
    hold = budgets.reserve(principal=principal, request_id="req", amount_micro=micro, images=images)
    budgets.settle(hold, cost_micro=micro, images=images)


def _fired(b: Budget) -> list[tuple[int, int | None]]:
    return list(
        SpendAlert.objects.filter(budget=b)
        .order_by("threshold", "limit_micro")
        .values_list("threshold", "limit_micro")
    )


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Alert ids whose delivery was queued; nothing is delivered."""
    ids: list[int] = []
    monkeypatch.setattr(alerts, "queue_delivery", ids.append)
    return ids


# --- Spend alerts: when they must fire, and when they must not -------------------------------


def test_a_limit_lowered_to_what_was_already_spent_fires_80_and_100_percent(
    api_key: CreatedKey, workspace: Workspace, queued: list[int]
) -> None:
    """An operator lowers a $0.10 budget to the $0.06 already spent: the budget is now full
    and every further request is a 402, so 'the next charge' never comes. The tenant's
    workloads stop and no 80% or 100% alert ever tells them."""
    b = _budget(workspace=workspace, key=api_key.key, period="month", limit_micro=100_000)
    _charge(api_key.secret, 60_000)
    assert _fired(b) == [(50, 100_000)]
    billing_services.budget_change_limits(actor=ACTOR, budget=b, fields={"limit_micro": 60_000})
    with pytest.raises(InsufficientQuota):
        budgets.reserve(
            principal=authenticate_secret(api_key.secret),
            request_id="refused",
            amount_micro=1_000,
            images=1,
        )
    assert {t for t, _ in _fired(b)} == {50, 80, 100}


def test_a_zero_money_limit_does_not_fire_every_threshold_on_the_first_free_image(
    api_key: CreatedKey, workspace: Workspace, queued: list[int]
) -> None:
    """A budget of $0 and 100 images (free models only): one free image is 1% of it, yet
    `used_micro * 100 >= t * 0` holds for every t, so 50, 80 and 100% all fire at once. The
    dashboard's own near-limit query skips zero limits (limit_micro__gt=0); alerts do not."""
    b = _budget(
        workspace=workspace, key=api_key.key, period="month", limit_micro=0, limit_images=100
    )
    _charge(api_key.secret, 0, images=1)
    assert _fired(b) == []


# --- Spend alerts: delivery ---------------------------------------------------------------------


@contextlib.contextmanager
def _trickling_receiver(seconds: float, every: float) -> Iterator[str]:
    """A webhook receiver that answers one byte of its status line at a time, `every`
    seconds, for `seconds` (each byte arrives well within any read timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                deadline = time.monotonic() + seconds
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    while time.monotonic() < deadline and not stop.is_set():
                        conn.sendall(b"X-Slow: a\r\n")
                        stop.wait(every)
                    conn.sendall(b"Content-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_webhook_that_trickles_its_answer_cannot_hold_a_delivery_past_its_timeouts(
    workspace: Workspace, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeouts are per socket read, not per attempt: a tenant's receiver that sends a
    header line every half second keeps one attempt going for as long as it likes. With a
    worker that is a Celery slot held indefinitely (the tasks share one queue and have no
    time limit, so the reaper and the rollups wait behind it); eagerly, the request whose
    settlement crossed the threshold. Here: 0.5 s timeouts, a 6-second trickle."""
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    monkeypatch.setattr(alert_delivery, "TIMEOUT", (0.5, 0.5))
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    with _trickling_receiver(seconds=6, every=0.25) as url:
        b = _budget(workspace=workspace, period="month", limit_micro=1_000_000)
        Budget.objects.filter(pk=b.pk).update(alert_webhook_url=url)
        alert = SpendAlert.objects.create(
            workspace=workspace,
            budget=b,
            period_start=datetime(2026, 12, 1, tzinfo=UTC),
            threshold=80,
            used_micro=800_000,
            limit_micro=1_000_000,
            fired_at=datetime(2026, 12, 17, tzinfo=UTC),
            webhook_status=Delivery.PENDING,
            email_status=Delivery.NONE,
        )
        started = time.monotonic()
        alert_delivery.deliver(alert_id=alert.pk, final=True)
        took = time.monotonic() - started
    assert took < 3, f"one delivery attempt took {took:.1f} s with 0.5 s timeouts"


def test_a_tenants_text_is_not_mailed_to_addresses_nobody_confirmed(
    admin: SchemaCheckedClient,
    team: Team,
    workspace: Workspace,
    mailoutbox: list[Any],
) -> None:
    """A tenant names a key with a phishing line, gives its budget any third party's
    address, and lets the gateway's own mail server deliver the text (the key's name is in
    the subject) under the operator's sender. Keys and budgets are unlimited, so is the mail."""
    lure = "Your invoice is overdue - pay at https://pay-aperture.example.net"
    victim = "someone@victim.example.org"
    created = key_create(actor=ACTOR, team=team, name=lure)
    made = admin.post(
        "/api/v1/budgets",
        {
            "key": created.key.public_id,
            "period": "month",
            "limit_usd": "0.010000",
            "alert_thresholds": [1],
            "alert_emails": [victim],
        },
        format="json",
    )
    assert made.status_code == 201, made.json()
    _charge(created.secret, 1_000)  # 10% of $0.01: the 1% threshold fires
    for alert in SpendAlert.objects.filter(budget__key=created.key):
        alert_delivery.deliver(alert_id=alert.pk, final=True)
    sent = [m for m in mailoutbox if victim in m.to]
    assert all("pay-aperture.example.net" not in m.subject + m.body for m in sent), [
        m.subject for m in sent
    ]


def test_a_team_manager_does_not_read_the_workspace_webhooks_token(
    workspace: Workspace, manager: SchemaCheckedClient
) -> None:
    """The workspace's budget is the operators' and the workspace admin's; its webhook URL
    often carries the receiver's token (the audit trail keeps only its host for that
    reason). A `manage:team` key of any team reads it whole from GET /api/v1/budgets."""
    token = "rcv_tok_" + uuid.uuid4().hex
    b = _budget(workspace=workspace, period="month", limit_micro=1_000_000)
    Budget.objects.filter(pk=b.pk).update(
        alert_webhook_url=f"https://hooks.example.com/aperture?token={token}",
        alert_emails=["cfo@acme.example"],
    )
    listed = manager.get("/api/v1/budgets")
    assert listed.status_code == 200
    assert token not in json.dumps(listed.json())


@pytest.mark.parametrize(
    "url",
    [
        "https://[::ffff:127.0.0.1]/h",
        "https://[::ffff:a9fe:a9fe]/latest/meta-data",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]:8443/h",
        "https://localhost/h",
        "https://2130706433/h",
        "https://0x7f000001/h",
        "https://10.0.0.1/h",
        "https://[fd00::1]/h",
    ],
)
def test_a_webhook_url_on_a_private_address_in_any_spelling_is_refused(url: str) -> None:
    """Coverage: IPv4-mapped IPv6, decimal and hex IPv4, link-local metadata, ULA."""
    with pytest.raises(ValidationError):
        alerts.clean_webhook_url(url)


def test_a_webhook_redirect_is_not_followed(workspace: Workspace, settings: Any) -> None:
    """Coverage: a receiver answering 307 to another address gets the alert once; the
    target of the redirect never sees it, and the attempt is recorded as failed."""
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    hits: dict[str, int] = {"redirector": 0, "target": 0}

    def server(name: str, status: int, location: str = "") -> ThreadingHTTPServer:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hits[name] += 1
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd

    target = server("target", 200)
    redirector = server("redirector", 307, f"http://127.0.0.1:{target.server_address[1]}/stolen")
    try:
        b = _budget(workspace=workspace, period="month", limit_micro=1_000_000)
        Budget.objects.filter(pk=b.pk).update(
            alert_webhook_url=f"http://127.0.0.1:{redirector.server_address[1]}/hook"
        )
        alert = SpendAlert.objects.create(
            workspace=workspace,
            budget=b,
            period_start=datetime(2026, 12, 1, tzinfo=UTC),
            threshold=80,
            used_micro=800_000,
            limit_micro=1_000_000,
            fired_at=datetime(2026, 12, 17, tzinfo=UTC),
            webhook_status=Delivery.PENDING,
            email_status=Delivery.NONE,
        )
        alert_delivery.deliver(alert_id=alert.pk, final=True)
    finally:
        for httpd in (target, redirector):
            httpd.shutdown()
            httpd.server_close()
    alert.refresh_from_db()
    assert hits == {"redirector": 1, "target": 0}
    assert (alert.webhook_status, alert.webhook_last_error) == (Delivery.FAILED, "HTTP 307")


# --- Prometheus labels ----------------------------------------------------------------------------


def _alias_label_values(prefix: str) -> set[str]:
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    return {
        sample.labels["alias"]
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if sample.labels.get("alias", "").startswith(prefix)
    }


@override_settings(METRICS_TOKEN="")
def test_a_tenant_cannot_mint_metric_label_values_by_creating_aliases(
    admin: SchemaCheckedClient,
    client: APIClient,
    fake_upstream: FakeUpstream,
    settings: Any,
) -> None:
    """aperture/metrics.py: label values are 'never … a name the caller made up'. A
    workspace alias's name is exactly that: a manage:workspace key creates as many as it
    likes (no cap), each named as it likes, and each becomes new series of every request
    counter, both histograms and the circuit gauges, kept for the life of the process and
    never dropped when the alias is deleted."""
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    Price.objects.create(provider="openai", model_pattern="byok-model", per_image_micro=1_000)
    credential = admin.post(
        "/api/v1/credentials",
        {
            "name": "mine",
            "provider": "openai",
            "secret": UPSTREAM_SECRET,
            "base_url": fake_upstream.url,
        },
        format="json",
    )
    assert credential.status_code == 201, credential.json()
    prefix = "t" + uuid.uuid4().hex[:8]
    for n in range(12):
        made = admin.post(
            "/api/v1/aliases",
            {
                "name": f"{prefix}-{n}",
                "deployments": [
                    {"credential": credential.json()["id"], "upstream_model": "byok-model"}
                ],
            },
            format="json",
        )
        assert made.status_code == 201, made.json()
        served = client.post(
            URL, {"model": f"{prefix}-{n}", "prompt": "a label", "size": "1024x1024"}, format="json"
        )
        assert served.status_code == 200, served.json()
    assert len(_alias_label_values(prefix)) <= 1


@override_settings(METRICS_TOKEN="")
@pytest.mark.parametrize(
    "headers",
    [{"X-Forwarded-Proto": "https"}, {"X-Forwarded-Host": "gw.example.com"}],
)
def test_a_proxy_that_only_says_the_scheme_is_still_a_proxy(
    db: None, headers: dict[str, str]
) -> None:
    """settings.py trusts X-Forwarded-Proto (SECURE_PROXY_SSL_HEADER): the deployment it
    expects is a TLS proxy on this host that sets it. A proxy configured with only that (or
    X-Forwarded-Host) and no X-Forwarded-For relays the internet's /metrics from 127.0.0.1,
    and the loopback rule serves it."""
    response = Client().get("/metrics", headers=headers, REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 403


# --- Structured logs --------------------------------------------------------------------------


def test_a_model_name_cannot_forge_a_line_of_the_text_request_log(
    client: APIClient, platform_alias: ModelAlias, caplog: pytest.LogCaptureFixture
) -> None:
    """The default (text) log writes the caller's `model` as it came: a newline in it ends
    the gateway's line and starts one the caller wrote, request id, status and all."""
    forged = (
        "nope\n2026-12-02 13:00:00,000 INFO aperture.requests [req_forged] "
        "images.generations demo-image 200 in 5 ms: 1 image(s), $0.000000"
    )
    with caplog.at_level(logging.INFO, logger="aperture.requests"):
        refused = client.post(URL, {"model": forged, "prompt": "x"}, format="json")
    assert refused.status_code == 404
    (record,) = [r for r in caplog.records if r.name == "aperture.requests"]
    record.request_id = getattr(record, "request_id", "-")
    text_format: str = settings.LOGGING["formatters"]["text"]["format"]  # type: ignore[index]
    line = logging.Formatter(text_format).format(record)
    assert len(line.splitlines()) == 1, line


def test_an_alert_email_in_the_default_backend_does_not_break_json_logs(
    workspace: Workspace, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without EMAIL_URL the backend is the console: with APERTURE_LOG_FORMAT=json an alert
    is written to the process's output as a multi-line MIME message, between the JSON lines
    that 'every line of the output' was promised to be."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    b = _budget(workspace=workspace, period="month", limit_micro=1_000_000)
    Budget.objects.filter(pk=b.pk).update(alert_emails=["ops@acme.example"])
    alert = SpendAlert.objects.create(
        workspace=workspace,
        budget=b,
        period_start=datetime(2026, 12, 1, tzinfo=UTC),
        threshold=80,
        used_micro=800_000,
        limit_micro=1_000_000,
        fired_at=datetime(2026, 12, 17, tzinfo=UTC),
        webhook_status=Delivery.NONE,
        email_status=Delivery.PENDING,
    )
    capsys.readouterr()
    alert_delivery.deliver(alert_id=alert.pk, final=True)
    out = capsys.readouterr().out
    assert out, "the console backend wrote nothing"
    bad = []
    for line in out.splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    assert bad == []


@pytest.mark.django_db(transaction=True)
def test_a_warning_logged_inside_a_celery_task_is_a_json_line(
    workspace: Workspace, tmp_path: Any
) -> None:
    """`make serve` and the README's production commands run a Celery worker beside
    gunicorn. With APERTURE_LOG_FORMAT=json the app's own warnings and errors logged inside
    tasks (here: a spend alert's failed webhook) come out in Celery's plain-text format, as
    do all the worker's lines: the worker takes over the root logger that settings.LOGGING
    configured (no `setup_logging` receiver, `worker_hijack_root_logger` left on)."""
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    b = _budget(workspace=workspace, period="month", limit_micro=1_000_000)
    Budget.objects.filter(pk=b.pk).update(alert_webhook_url="http://127.0.0.1:9/hook")
    alert = SpendAlert.objects.create(
        workspace=workspace,
        budget=b,
        period_start=datetime(2026, 12, 1, tzinfo=UTC),
        threshold=80,
        used_micro=800_000,
        limit_micro=1_000_000,
        fired_at=datetime(2026, 12, 17, tzinfo=UTC),
        webhook_status=Delivery.PENDING,
        email_status=Delivery.NONE,
    )
    queue = f"test-{uuid.uuid4().hex}"
    out = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "APERTURE_DB_POOL": "false",
        "APERTURE_LOG_FORMAT": "json",
        "APERTURE_FETCH_ALLOWED_HOSTS": "",  # loopback is private: the attempt fails, logged
        "LOG_LEVEL": "INFO",
    }
    with out.open("wb") as sink:
        worker = subprocess.Popen(
            [
                str(VENV_BIN / "celery"),
                "-A",
                "aperture",
                "worker",
                "--pool",
                "solo",
                "-Q",
                queue,
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deliver_spend_alert.apply_async(args=[alert.pk], queue=queue)
            wait_for(
                lambda: alert.public_id.encode() in out.read_bytes(),
                timeout=60,
                what="the worker to log the failed webhook",
            )
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    lines = [line for line in out.read_text().splitlines() if alert.public_id in line]
    assert lines
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            raise AssertionError(f"not JSON: {line}") from None
        assert parsed["logger"] == "billing.alert_delivery"


def test_fetching_the_public_schema_writes_no_plain_text_to_the_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SpendAlertOut's webhook_status and email_status share one choice set: drf-spectacular
    prints a warning to stderr on every generation, and /api/schema/ is public. Any caller
    adds a plain-text line to a JSON log at will (and `spectacular --fail-on-warn` fails)."""
    capsys.readouterr()
    assert Client().get("/api/schema/").status_code == 200
    assert capsys.readouterr().err == ""


# --- The dashboard and its rollup -----------------------------------------------------------


def _usage(key_owner: CreatedKey, at: datetime, n: int) -> UsageRecord:
    key = key_owner.key
    return UsageRecord.objects.create(
        request_id=f"req_hostile_{n}",
        created_at=at,
        workspace_id=key.workspace_id,
        team_id=key.team_id,
        key=key,
        alias="image-prod",
        provider="openai",
        deployment_id=0,
        endpoint="images.generations",
        status=200,
        images=1,
        cost_micro=40_000,
        total_ms=800,
    )


def test_an_odd_workspace_filter_is_a_404_not_a_500(admin_client: Client) -> None:
    """`raw.isdigit()` accepts superscript digits, which int() refuses: the operator gets a
    server error instead of 'No such workspace'."""
    admin_client.raise_request_exception = False
    page = admin_client.get(reverse("admin:index"), {"workspace": "²"})
    assert page.status_code == 404


def test_hours_missed_while_the_beat_was_down_are_rolled_up_by_its_next_run(
    api_key: CreatedKey,
) -> None:
    """The beat's task rolls up 'the current and previous hour' only. Beat or worker down
    for three hours (a deploy, a Redis outage, or the worker stuck behind slow webhooks while
    the task's 300-s `expires` drops each run): those hours are never rolled up, and the
    dashboard shows them empty for good, unless someone runs a manual backfill."""
    with time_machine.travel(NOW, tick=False):
        _usage(api_key, NOW - timedelta(hours=3), 1)
        _usage(api_key, NOW - timedelta(minutes=5), 2)
        rollup_hourly_usage()
        rolled = set(HourlyUsage.objects.values_list("hour", flat=True))
    assert rollups.hour_start(NOW - timedelta(hours=3)) in rolled


def test_an_idle_embedded_dashboard_does_not_roll_up_the_month_on_every_page_load(
    api_key: CreatedKey, admin_client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded default: the page catches up from the newest HourlyUsage row. Empty hours
    write no row, so on a gateway idle for ten days every page load (every 5 minutes) rolls
    up the same 240 empty hours again, a few queries each, inside the operator's request."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    _usage(api_key, NOW - timedelta(days=10), 1)
    rolled: list[datetime] = []
    real = rollups.rollup_hour

    def counted(hour: datetime) -> int:
        rolled.append(hour)
        return real(hour)

    monkeypatch.setattr(rollups, "rollup_hour", counted)
    with time_machine.travel(NOW, tick=False) as clock:
        assert admin_client.get(reverse("admin:index")).status_code == 200
        first = len(rolled)
        clock.shift(timedelta(minutes=6))
        rolled.clear()
        assert admin_client.get(reverse("admin:index")).status_code == 200
    assert first > 200  # the first load catches up once: expected
    assert len(rolled) <= 2, f"the second page load rolled up {len(rolled)} hours again"


@pytest.mark.django_db(transaction=True)
def test_two_rollups_of_the_same_hour_at_once_do_not_fail() -> None:
    """The embedded dashboard rolls up inside page loads, and an operator's backfill can
    overlap the beat's run: two transactions each delete the hour's rows and insert their
    own; the second's INSERT waits on the first's unique keys and then fails."""
    ws = tenant_services.workspace_create(actor=ACTOR, slug="twice", name="Twice")
    team = tenant_services.team_create(actor=ACTOR, workspace=ws, slug="t", name="T")
    created = key_create(actor=ACTOR, team=team, name="k")
    hour = rollups.hour_start(NOW)
    _usage(created, hour + timedelta(minutes=1), 1)

    inserted = threading.Event()
    release = threading.Event()
    real_bulk_create = HourlyUsage.objects.bulk_create
    errors: list[BaseException] = []

    def slow_bulk_create(*args: Any, **kwargs: Any) -> Any:
        result = real_bulk_create(*args, **kwargs)
        if threading.current_thread().name == "first-rollup":
            inserted.set()
            release.wait(10)
        return result

    def roll_up() -> None:
        from django.db import connection

        try:
            rollups.rollup_hour(hour)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def second_waits() -> bool:
        from django.db import connection

        with connection.cursor() as cursor:  # in this test database only (xdist shares a server)
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN "
                "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
            )
            return bool(cursor.fetchone()[0])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HourlyUsage.objects, "bulk_create", slow_bulk_create)
        threads = [
            threading.Thread(target=roll_up, name="first-rollup"),
            threading.Thread(target=roll_up, name="second-rollup"),
        ]
        threads[0].start()
        try:
            assert inserted.wait(10)
            threads[1].start()
            wait_for(second_waits, timeout=10, what="the second rollup to wait")
        finally:
            release.set()  # the first commits while the second waits on its rows
            for thread in threads:
                if thread.ident is not None:
                    thread.join(10)
    assert errors == []
    assert HourlyUsage.objects.filter(hour=hour).count() == 1


def test_unknown_model_names_do_not_each_become_a_rollup_row_and_a_dashboard_alias(
    client: APIClient, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    """A refused request's record keeps the caller's `model` text as its alias (meter.alias
    is set before the alias resolves), and the hourly rollup groups by it. A 404 is refused
    before any rate limit, so a tenant sending random model names writes one HourlyUsage
    row per name per hour, without bound: the dashboard's 'never scan millions' reads them
    all, and its 'By alias' table and charts show whatever text the tenant chose."""
    for n in range(20):
        refused = client.post(
            URL, {"model": f"CALL-SUPPORT-+1-555-0100-{n}", "prompt": "x"}, format="json"
        )
        assert refused.status_code == 404
    hour = rollups.hour_start(UsageRecord.objects.latest("created_at").created_at)
    rollups.rollup_hour(hour)
    aliases = set(HourlyUsage.objects.filter(hour=hour).values_list("alias", flat=True))
    assert not any(a.startswith("CALL-SUPPORT") for a in aliases), sorted(aliases)[:3]


def test_hostile_names_are_escaped_on_the_dashboard_page(
    admin_client: Client, team: Team, settings: Any
) -> None:
    """Coverage: key names, caller-chosen alias text and workspace names reach the page's
    tables, chart legends and <title>s escaped."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    Workspace.objects.filter(pk=team.workspace_id).update(name="<svg onload=alert(0)>")
    created = key_create(actor=ACTOR, team=team, name="<img src=x onerror=alert(1)>")
    with time_machine.travel(NOW, tick=False):
        record = _usage(created, NOW - timedelta(minutes=5), 1)
        UsageRecord.objects.filter(pk=record.pk).update(alias="<script>alert(2)</script>")
        rollups.rollup_hour(NOW)
        page = admin_client.get(reverse("admin:index"))
        filtered = admin_client.get(reverse("admin:index"), {"workspace": team.workspace_id})
    for response in (page, filtered):
        html = response.content.decode()
        assert response.status_code == 200
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
        for raw in ("<script>alert(2)", "<img src=x", "<svg onload"):
            assert raw not in html
