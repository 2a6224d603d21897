import re
import statistics
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from aperture.errors import AuthenticationError
from routing.models import ModelAlias
from tenants import keys, services
from tenants.key_auth import authenticate_secret
from tenants.keys import hash_secret
from tenants.models import ApiKey, Team, Workspace
from tenants.services import CreatedKey
from tests.support import client_for

ACTOR = "system:tests"
KEY_SHAPE = re.compile(r"^apk_[A-Za-z0-9]{12}_[A-Za-z0-9]{43}$")


def _models(client, **extra):
    return client.get("/v1/models", **extra)


def test_created_key_has_the_documented_shape_and_only_its_hash_is_stored(
    api_key: CreatedKey,
) -> None:
    assert KEY_SHAPE.match(api_key.secret)
    row = ApiKey.objects.get(pk=api_key.key.pk)
    assert api_key.secret.split("_")[1] == row.public_id
    assert row.secret_hash == hash_secret(api_key.secret)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM tenants_apikey WHERE id = %s", [row.pk])
        raw = " ".join(str(value) for value in cursor.fetchone())
    assert api_key.secret not in raw
    assert api_key.secret.split("_")[2] not in raw


def test_a_valid_bearer_key_authenticates(client, platform_alias: ModelAlias) -> None:
    response = _models(client)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["demo-image"]


def test_the_azure_api_key_header_is_accepted(
    api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    from rest_framework.test import APIClient

    response = APIClient().get("/v1/models", HTTP_API_KEY=api_key.secret)
    assert response.status_code == 200


def test_a_missing_key_gets_401_in_the_error_envelope(db: None) -> None:
    from rest_framework.test import APIClient

    response = APIClient().get("/v1/models")
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "No API key provided. Send it as 'Authorization: Bearer <key>' or "
            "'api-key: <key>'.",
            "type": "authentication_error",
            "param": None,
            "code": "missing_api_key",
        }
    }
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "apk_abc",
        "Basic dXNlcjpwYXNz",
        "Bearer " + "a" * 10_000,
        "Bearer apk_ключ_секрет",
        "Bearer apk_AAAAAAAAAAAA_" + "B" * 43 + "\u00e9",
        "Bearer apk_AAAAAAAAAAAA_" + "B" * 43,  # well-shaped, unknown
        "Bearer apk_AAAAAAAAAAAA_" + "B" * 42 + "!",
    ],
)
def test_malformed_or_unknown_authorization_gets_401_never_500(header: str, db: None) -> None:
    from rest_framework.test import APIClient

    response = APIClient().get("/v1/models", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_correct_public_id_with_a_wrong_secret_is_refused(api_key: CreatedKey) -> None:
    forged = api_key.secret[:-1] + ("A" if api_key.secret[-1] != "A" else "B")
    response = _models(client_for(forged))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Incorrect API key provided."


def test_revoked_key_is_refused_on_the_next_request(client, api_key: CreatedKey) -> None:
    assert _models(client).status_code == 200  # warms the auth cache
    services.key_revoke(actor=ACTOR, key=api_key.key)
    response = _models(client)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has been revoked."


def test_expired_key_is_refused(team: Team) -> None:
    created = services.key_create(
        actor=ACTOR, team=team, name="short", expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = _models(client_for(created.secret))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has expired."


def test_suspended_workspace_gets_403(client, workspace: Workspace) -> None:
    assert _models(client).status_code == 200
    services.workspace_set_status(
        actor=ACTOR, workspace=workspace, status=Workspace.Status.SUSPENDED
    )
    response = _models(client)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "workspace_suspended"


def test_archived_team_keys_are_refused(client, team: Team) -> None:
    assert _models(client).status_code == 200
    services.team_archive(actor=ACTOR, team=team)
    assert _models(client).status_code == 401


def test_a_key_without_the_images_scope_gets_403_on_inference_routes(team: Team) -> None:
    created = services.key_create(actor=ACTOR, team=team, name="mgmt", scopes=["manage:team"])
    response = _models(client_for(created.secret))
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_last_used_is_written_at_most_once_a_minute(client, api_key: CreatedKey) -> None:
    assert _models(client).status_code == 200
    first = ApiKey.objects.get(pk=api_key.key.pk).last_used_at
    assert first is not None
    sentinel = first - timedelta(hours=1)
    ApiKey.objects.filter(pk=api_key.key.pk).update(last_used_at=sentinel)
    for _ in range(3):
        assert _models(client).status_code == 200
    assert ApiKey.objects.get(pk=api_key.key.pk).last_used_at == sentinel


def test_authentication_is_served_from_cache_after_the_first_request(
    client,
    platform_alias: ModelAlias,
    django_assert_max_num_queries,
) -> None:
    assert _models(client).status_code == 200
    with django_assert_max_num_queries(2):  # aliases and deployments; no key lookup
        assert _models(client).status_code == 200


@override_settings(
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
)
def test_keys_still_authenticate_and_revoke_when_the_cache_is_down(
    client,
    api_key: CreatedKey,
) -> None:
    assert _models(client).status_code == 200
    services.key_revoke(actor=ACTOR, key=api_key.key)
    assert _models(client).status_code == 401


def test_key_creation_and_revocation_are_audited(api_key: CreatedKey) -> None:
    services.key_revoke(actor=ACTOR, key=api_key.key)
    events = list(
        api_key.key.workspace.audit_events.filter(target_id=api_key.key.public_id)
        .order_by("created_at", "id")
        .values_list("event", "actor")
    )
    assert events == [("key.created", ACTOR), ("key.revoked", ACTOR)]


def test_unknown_scopes_are_refused(team: Team) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.key_create(actor=ACTOR, team=team, name="x", scopes=["root"])
    assert not ApiKey.objects.filter(name="x").exists()


def _refused(secret: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        authenticate_secret(secret)
    return refused.value.message


def _wrong_secret(api_key: CreatedKey) -> str:
    return api_key.secret[:-1] + ("A" if api_key.secret[-1] != "A" else "B")


UNKNOWN_ID = "apk_" + "Z" * 12 + "_" + "B" * 43


def test_an_unknown_key_id_is_answered_from_cache_with_the_work_of_a_wrong_secret(
    api_key: CreatedKey, monkeypatch: pytest.MonkeyPatch, django_assert_num_queries
) -> None:
    wrong = _wrong_secret(api_key)
    for secret in (wrong, UNKNOWN_ID):  # the first sight of either reads the database
        assert _refused(secret) == "Incorrect API key provided."
    hashed: list[str] = []
    real_hash = keys.hash_secret

    def counted(secret: str) -> str:
        hashed.append(secret)
        return real_hash(secret)

    monkeypatch.setattr(keys, "hash_secret", counted)
    with django_assert_num_queries(0):
        assert _refused(UNKNOWN_ID) == "Incorrect API key provided."
        assert hashed == [UNKNOWN_ID]
        assert _refused(wrong) == "Incorrect API key provided."
        assert hashed == [UNKNOWN_ID, wrong]


def test_a_key_created_with_an_id_refused_before_authenticates_at_once(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _refused(UNKNOWN_ID) == "Incorrect API key provided."  # now cached as unknown
    monkeypatch.setattr(keys, "random_alphanumeric", lambda n: ("Z" if n == 12 else "B") * n)
    created = services.key_create(actor=ACTOR, team=team, name="later")
    assert created.secret == UNKNOWN_ID
    assert authenticate_secret(UNKNOWN_ID).key_id == created.key.pk


def test_an_unknown_key_id_takes_as_long_as_a_wrong_secret(api_key: CreatedKey) -> None:
    """Medians of interleaved calls: an attacker cannot tell ids that exist by timing."""
    wrong = _wrong_secret(api_key)
    timings: dict[str, list[float]] = {wrong: [], UNKNOWN_ID: []}
    for _ in range(200):
        for secret, samples in timings.items():
            started = time.perf_counter()
            _refused(secret)
            samples.append(time.perf_counter() - started)
    known, unknown = (statistics.median(timings[s]) for s in (wrong, UNKNOWN_ID))
    assert 0.5 < unknown / known < 2, (unknown, known)
