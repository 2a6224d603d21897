"""BYOK: a workspace's own credentials and aliases through the management API."""

import json

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from routing.models import ModelAlias, ProviderCredential
from tenants.models import AuditEvent, Workspace
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient
from tests.support import free_port


@pytest.fixture
def loopback_allowed(settings: SettingsWrapper) -> None:
    """The fake upstream listens on 127.0.0.1, which a workspace may not name by default."""
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]


def _add(admin: SchemaCheckedClient, base_url: str, secret: str = UPSTREAM_SECRET, **more: object):
    return admin.post(
        "/api/v1/credentials",
        {
            "name": "acme-openai",
            "provider": "openai",
            "secret": secret,
            "base_url": base_url,
            **more,
        },
        format="json",
    )


def test_a_credential_is_added_masked_and_its_secret_never_returned(
    admin: SchemaCheckedClient,
    fake_upstream: FakeUpstream,
    loopback_allowed: None,
    workspace: Workspace,
) -> None:
    response = _add(admin, fake_upstream.url)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"] == "••••6789"
    assert body["base_url"] == fake_upstream.url
    for later in (
        admin.get("/api/v1/credentials"),
        admin.get(f"/api/v1/credentials/{body['id']}"),
        admin.get("/api/v1/audit-events"),
    ):
        assert UPSTREAM_SECRET not in later.content.decode()
    stored = ProviderCredential.objects.get(public_id=body["id"])
    assert stored.workspace == workspace
    assert UPSTREAM_SECRET not in stored.secret_ciphertext
    assert stored.secret() == UPSTREAM_SECRET
    assert AuditEvent.objects.filter(event="credential.created", target_id=body["id"]).exists()


@pytest.mark.parametrize(
    ("base_url", "fragment"),
    [
        ("http://127.0.0.1:9", "https"),
        ("https://127.0.0.1:9", "private"),
        ("https://169.254.169.254", "private"),
        ("https://10.0.0.8", "private"),
        ("https://localhost", "private"),
        ("https://[::1]", "private"),
        ("https://user:pw@api.openai.com", "user info"),
        ("ftp://api.openai.com", "https"),
        ("https://no-such-host.invalid", "does not resolve"),
        ("not a url", "https"),
    ],
)
def test_a_hostile_base_url_is_a_400_and_nothing_is_stored(
    admin: SchemaCheckedClient, base_url: str, fragment: str
) -> None:
    response = _add(admin, base_url)
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == "base_url"
    assert fragment in response.json()["error"]["message"]
    assert not ProviderCredential.objects.exists()


def test_bad_credential_input_is_a_400(admin: SchemaCheckedClient, db: None) -> None:
    for body, param in (
        ({"name": "x", "provider": "local", "secret": "s"}, "provider"),
        ({"name": "x", "provider": "openai", "secret": ""}, "secret"),
        ({"name": "v1", "provider": "openai", "secret": "sk-123456789"}, "name"),
        (
            {
                "name": "x",
                "provider": "azure",
                "secret": "k",
                "base_url": "https://x.openai.azure.com",
            },
            "api_version",
        ),
    ):
        response = admin.post("/api/v1/credentials", body, format="json")
        assert response.status_code == 400, (body, response.json())
        assert response.json()["error"]["param"] == param, body
    assert not ProviderCredential.objects.exists()


def test_the_test_action_reports_success_or_the_providers_error(
    admin: SchemaCheckedClient, fake_upstream: FakeUpstream, loopback_allowed: None
) -> None:
    good = _add(admin, fake_upstream.url).json()
    result = admin.post(f"/api/v1/credentials/{good['id']}/test").json()
    assert result["ok"] is True
    assert result["status"] == 200
    assert result["url"] == f"{fake_upstream.url}/v1/models"
    called = fake_upstream.requests[-1]
    assert (called.method, called.path) == ("GET", "/v1/models")
    assert called.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    wrong = admin.post(
        "/api/v1/credentials",
        {
            "name": "wrong",
            "provider": "openai",
            "secret": "sk-wrong-000000",
            "base_url": fake_upstream.url,
        },
        format="json",
    ).json()
    result = admin.post(f"/api/v1/credentials/{wrong['id']}/test").json()
    assert result == {
        "ok": False,
        "provider": "openai",
        "url": f"{fake_upstream.url}/v1/models",
        "status": 401,
        "message": "openai: Incorrect API key provided.",
        "latency_ms": result["latency_ms"],
    }


def test_the_test_action_reports_an_unreachable_provider(
    admin: SchemaCheckedClient, loopback_allowed: None
) -> None:
    closed = _add(admin, f"http://127.0.0.1:{free_port()}").json()
    result = admin.post(f"/api/v1/credentials/{closed['id']}/test").json()
    assert (result["ok"], result["status"]) == (False, None)
    assert "could not be reached" in result["message"]


def test_the_test_action_checks_the_address_again_when_it_connects(
    admin: SchemaCheckedClient, fake_upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    created = _add(admin, fake_upstream.url).json()
    settings.FETCH_ALLOWED_HOSTS = []  # as if the name now resolved somewhere private
    calls = len(fake_upstream.requests)
    result = admin.post(f"/api/v1/credentials/{created['id']}/test").json()
    assert result["ok"] is False
    assert "private address" in result["message"]
    assert len(fake_upstream.requests) == calls


def test_a_provider_without_a_free_check_call_says_so(
    admin: SchemaCheckedClient, loopback_allowed: None
) -> None:
    created = admin.post(
        "/api/v1/credentials",
        {
            "name": "ark",
            "provider": "seedream",
            "secret": "ark-key-12345678",
            "base_url": f"http://127.0.0.1:{free_port()}",
        },
        format="json",
    ).json()
    response = admin.post(f"/api/v1/credentials/{created['id']}/test")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported"


def test_rotating_a_credential_changes_the_secret_the_gateway_sends(
    admin: SchemaCheckedClient,
    fake_upstream: FakeUpstream,
    loopback_allowed: None,
    client: APIClient,
) -> None:
    created = _add(admin, fake_upstream.url, secret="sk-old-secret-0000").json()
    alias = admin.post(
        "/api/v1/aliases",
        {
            "name": "acme-image",
            "deployments": [{"credential": created["id"], "upstream_model": "gpt-image-1"}],
        },
        format="json",
    )
    assert alias.status_code == 201, alias.json()
    body = json.dumps({"model": "acme-image", "prompt": "x", "size": "1024x1024"})
    generate = lambda: client.post(  # noqa: E731
        "/v1/images/generations", body, content_type="application/json"
    )
    assert generate().status_code == 502  # the fake upstream refuses the old secret
    rotated = admin.post(
        f"/api/v1/credentials/{created['id']}/rotate", {"secret": UPSTREAM_SECRET}, format="json"
    )
    assert rotated.json()["secret"] == "••••6789"
    assert generate().status_code == 200
    assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert AuditEvent.objects.filter(event="credential.rotated", target_id=created["id"]).exists()


def test_a_credential_in_use_cannot_be_deleted_until_its_alias_is(
    admin: SchemaCheckedClient, fake_upstream: FakeUpstream, loopback_allowed: None
) -> None:
    created = _add(admin, fake_upstream.url).json()
    alias = admin.post(
        "/api/v1/aliases",
        {
            "name": "acme-image",
            "deployments": [{"credential": created["id"], "upstream_model": "gpt-image-1"}],
        },
        format="json",
    ).json()
    in_use = admin.delete(f"/api/v1/credentials/{created['id']}")
    assert in_use.status_code == 409
    assert in_use.json()["error"]["code"] == "credential_in_use"
    assert admin.delete(f"/api/v1/aliases/{alias['id']}").status_code == 204
    assert admin.delete(f"/api/v1/credentials/{created['id']}").status_code == 204
    assert not ProviderCredential.objects.filter(public_id=created["id"]).exists()


def test_aliases_list_the_workspaces_and_the_platforms_with_capabilities(
    admin: SchemaCheckedClient,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    loopback_allowed: None,
) -> None:
    credential = _add(admin, fake_upstream.url).json()
    made = admin.post(
        "/api/v1/aliases",
        {
            "name": "acme-image",
            "description": "Ours",
            "deployments": [{"credential": credential["id"], "upstream_model": "gpt-image-1"}],
        },
        format="json",
    ).json()
    listed = {a["name"]: a for a in admin.get("/api/v1/aliases").json()["data"]}
    assert set(listed) == {"acme-image", "demo-image"}
    ours, theirs = listed["acme-image"], listed["demo-image"]
    assert (ours["owner"], ours["provider"], ours["available"]) == ("workspace", "openai", True)
    assert ours["deployments"][0]["credential"] == {
        "id": credential["id"],
        "name": "acme-openai",
        "provider": "openai",
    }
    assert "1024x1024" in json.dumps(ours["capabilities"])
    assert (theirs["owner"], theirs["deployments"]) == ("platform", [])
    assert admin.get(f"/api/v1/aliases/{made['id']}").json()["id"] == made["id"]
    assert admin.delete(f"/api/v1/aliases/{theirs['id']}").status_code == 403
    duplicate = admin.post(
        "/api/v1/aliases",
        {
            "name": "acme-image",
            "deployments": [{"credential": credential["id"], "upstream_model": "m"}],
        },
        format="json",
    )
    assert duplicate.status_code == 409


def test_a_workspace_alias_cannot_use_a_platform_credential(
    admin: SchemaCheckedClient, local_credential: ProviderCredential
) -> None:
    response = admin.post(
        "/api/v1/aliases",
        {
            "name": "sneaky",
            "deployments": [{"credential": local_credential.public_id, "upstream_model": "x"}],
        },
        format="json",
    )
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "deployments.0.credential"
    assert not ModelAlias.objects.filter(name="sneaky").exists()


def test_credentials_need_manage_workspace(manager: SchemaCheckedClient) -> None:
    response = manager.get("/api/v1/credentials")
    assert response.status_code == 403


def test_a_workspace_credential_that_now_resolves_privately_is_not_called(
    admin: SchemaCheckedClient,
    fake_upstream: FakeUpstream,
    settings: SettingsWrapper,
    client: APIClient,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    created = _add(admin, fake_upstream.url).json()
    admin.post(
        "/api/v1/aliases",
        {
            "name": "acme-image",
            "deployments": [{"credential": created["id"], "upstream_model": "gpt-image-1"}],
        },
        format="json",
    )
    body = json.dumps({"model": "acme-image", "prompt": "x", "size": "1024x1024"})
    # DNS rebinding: the host was public when it was added, it answers privately now.
    settings.FETCH_ALLOWED_HOSTS = []
    calls = len(fake_upstream.requests)
    refused = client.post("/v1/images/generations", body, content_type="application/json")
    assert refused.status_code == 502
    assert "private address" in refused.json()["error"]["message"]
    assert len(fake_upstream.requests) == calls


def test_every_change_is_in_the_audit_trail_with_the_acting_key(
    admin: SchemaCheckedClient,
    admin_key: object,
    fake_upstream: FakeUpstream,
    loopback_allowed: None,
) -> None:
    credential = _add(admin, fake_upstream.url).json()
    alias = admin.post(
        "/api/v1/aliases",
        {
            "name": "acme-image",
            "deployments": [{"credential": credential["id"], "upstream_model": "gpt-image-1"}],
        },
        format="json",
    ).json()
    admin.post(
        f"/api/v1/credentials/{credential['id']}/rotate",
        {"secret": "sk-new-00000000"},
        format="json",
    )
    admin.delete(f"/api/v1/aliases/{alias['id']}")
    admin.delete(f"/api/v1/credentials/{credential['id']}")
    actor = f"key:{admin_key.key.public_id}"  # type: ignore[attr-defined]
    events = admin.get(f"/api/v1/audit-events?actor={actor}&limit=500").json()["results"]
    assert [e["event"] for e in reversed(events)] == [
        "credential.created",
        "alias.created",
        "deployment.created",
        "credential.rotated",
        "alias.deleted",
        "credential.deleted",
    ]
    assert {e["actor"] for e in events} == {actor}
    only_rotations = admin.get("/api/v1/audit-events?event=credential.rotated").json()["results"]
    assert [e["target_id"] for e in only_rotations] == [credential["id"]]
    assert "sk-new-00000000" not in json.dumps(events)


def test_passthrough_on_a_workspace_credential_that_now_resolves_privately_is_not_called(
    admin: SchemaCheckedClient,
    fake_upstream: FakeUpstream,
    settings: SettingsWrapper,
    client: APIClient,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    created = _add(admin, fake_upstream.url).json()
    credential = ProviderCredential.objects.get(public_id=created["id"])
    credential.passthrough_enabled = True  # an operator opened it, in the admin
    credential.save()
    settings.FETCH_ALLOWED_HOSTS = []  # DNS rebinding: it answers privately now
    calls = len(fake_upstream.requests)
    refused = client.get(f"/{credential.name}/v1/models")
    assert refused.status_code == 502
    assert "private address" in refused.json()["error"]["message"]
    assert len(fake_upstream.requests) == calls
