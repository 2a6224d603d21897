"""Admin sign-in is throttled (django-axes): a user and address that keep failing are locked
out, even with the right password, with a clear message and an audit row, until the cool-off
passes or an operator unlocks them."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from tenants.models import AuditEvent

LOGIN = "/admin/login/"
PASSWORD = "a long operator password"


@pytest.fixture
def operator(db: None) -> None:
    get_user_model().objects.create_superuser("op", "op@localhost", PASSWORD)


def _sign_in(client: Client, password: str, address: str = "198.51.100.7"):
    return client.post(
        LOGIN,
        {"username": "op", "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def test_the_eleventh_failed_sign_in_is_locked_even_with_the_right_password(
    operator: None,
) -> None:
    client = Client()
    for attempt in range(1, 10):
        refused = _sign_in(client, f"wrong {attempt}")
        assert refused.status_code == 200, attempt  # the form again, with Django's error
        assert b"Please enter the correct username and password" in refused.content
    tenth = _sign_in(client, "wrong 10")
    assert tenth.status_code == 429

    locked = _sign_in(client, PASSWORD)
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    text = locked.content.decode()
    assert "Too many failed sign-in attempts" in text
    assert "locked for 60 minutes" in text
    assert 'name="password"' not in text  # no form to keep guessing in

    (event,) = AuditEvent.objects.filter(event="operator.login_locked")
    assert (event.actor, event.target_type, event.target_id) == ("system:axes", "auth.user", "op")
    assert event.data == {"username": "op", "ip_address": "198.51.100.7", "failures": 10}


def test_another_address_is_not_locked_out_by_someone_elses_failures(operator: None) -> None:
    for attempt in range(10):
        _sign_in(Client(), f"wrong {attempt}", address="203.0.113.9")
    client = Client()
    signed_in = _sign_in(client, PASSWORD, address="198.51.100.7")
    assert signed_in.status_code == 302
    assert client.session["_auth_user_id"]


def test_an_operator_unlocks_with_axes_reset(operator: None) -> None:
    for attempt in range(10):
        _sign_in(Client(), f"wrong {attempt}")
    assert _sign_in(Client(), PASSWORD).status_code == 429
    call_command("axes_reset", stdout=io.StringIO())
    client = Client()
    assert _sign_in(client, PASSWORD).status_code == 302
    assert client.session["_auth_user_id"]
