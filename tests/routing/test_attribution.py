"""Attribution: a request's `user` and `metadata` are checked, kept on its usage record, and
never reach an upstream; the end user goes upstream as a stable, workspace-scoped hash."""

import base64
import io
import json

import pytest
from openai import OpenAI
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.models import ModelAlias, ProviderCredential
from tenants.end_users import end_user_id
from tenants.services import CreatedKey
from tests.conftest import make_alias
from tests.fakes.upstream import FakeUpstream, Recorded, form_parts, png
from tests.support import wait_for

URL = "/v1/images/generations"
EDIT = "/v1/images/edits"
RAW_USER = "alice@example.com"


def _post(client: APIClient, body: dict):
    return client.post(URL, json.dumps(body), content_type="application/json")


def _upload(name: str, data: bytes) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


@pytest.fixture
def remote_alias(openai_credential: ProviderCredential) -> ModelAlias:
    """`remote` → the fake upstream as OpenAI (free: what it costs is not the point here)."""
    return make_alias("remote", openai_credential, "gpt-image-2", free=True)


def _never_raw(recorded: Recorded, *raw: str) -> None:
    for value in raw:
        assert value.encode() not in recorded.raw, f"{value!r} reached the upstream"


BASE = {"model": "demo-image", "prompt": "a fox", "size": "64x64"}


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"user": 42}, "user", "'user' must be a string."),
        ({"user": "u" * 257}, "user", "'user' is 257 characters; at most 256."),
        ({"user": "a\x00b"}, "user", "'user' must not contain NUL characters."),
        ({"metadata": ["a"]}, "metadata", "'metadata' must be an object of strings."),
        ({"metadata": "feature"}, "metadata", "'metadata' must be a JSON object of strings."),
        (
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata",
            "'metadata' has 17 keys; at most 16.",
        ),
        (
            {"metadata": {"has space": "v"}},
            "metadata",
            "Invalid 'metadata' key 'has space': keys are 1-64 letters, digits, '_', '.', ':' "
            "or '-'.",
        ),
        (
            {"metadata": {"k" * 65: "v"}},
            "metadata",
            f"Invalid 'metadata' key {'k' * 65!r}: keys are 1-64 letters, digits, '_', '.', "
            "':' or '-'.",
        ),
        ({"metadata": {"feature": 3}}, "metadata.feature", "'metadata.feature' must be a string."),
        (
            {"metadata": {"feature": "x" * 513}},
            "metadata.feature",
            "'metadata.feature' is 513 characters; at most 512.",
        ),
        (
            {"metadata": {"feature": "a\x00"}},
            "metadata.feature",
            "'metadata.feature' must not contain NUL characters.",
        ),
    ],
)
def test_a_malformed_user_or_metadata_is_a_400_naming_it(
    client: APIClient, platform_alias: ModelAlias, fields: dict, param: str, message: str
) -> None:
    response = _post(client, {**BASE, **fields})
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }
    [record] = UsageRecord.objects.all()
    assert (record.status, record.end_user, record.metadata) == (400, "", {})


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"metadata": "{not json"}, "metadata", "'metadata' must be a JSON object of strings."),
        (
            {"metadata": '{"a": "b"}', "metadata[c]": "d"},
            "metadata",
            "Send 'metadata' as one object or as metadata[<key>] fields, not both.",
        ),
        ({"metadata[bad key]": "d"}, "metadata", None),
    ],
)
def test_a_malformed_metadata_field_of_an_edit_form_is_a_400(
    client: APIClient, platform_alias: ModelAlias, fields: dict, param: str, message: str | None
) -> None:
    data = {"model": "demo-image", "prompt": "a hat", "image": _upload("a.png", png(32, 32))}
    response = client.post(EDIT, {**data, **fields}, format="multipart")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message


def test_user_and_metadata_are_kept_on_the_usage_record(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    metadata = {"feature": "avatar", "plan": "pro:yearly", "empty": ""}
    assert _post(client, {**BASE, "user": RAW_USER, "metadata": metadata}).status_code == 200
    assert _post(client, BASE).status_code == 200
    records = UsageRecord.objects.order_by("created_at", "id")
    assert [(r.end_user, r.metadata) for r in records] == [(RAW_USER, metadata), ("", {})]


def test_an_edit_takes_metadata_as_a_json_string_or_as_bracketed_fields(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    image = {"model": "demo-image", "prompt": "a hat"}
    as_json = {**image, "image": _upload("a.png", png(32, 32)), "metadata": '{"feature": "hat"}'}
    assert client.post(EDIT, {**as_json, "user": "bob"}, format="multipart").status_code == 200
    bracketed = {
        **image,
        "image": _upload("a.png", png(32, 32)),
        "metadata[feature]": "scarf",
        "metadata[team.name]": "design",
    }
    assert client.post(EDIT, bracketed, format="multipart").status_code == 200
    records = UsageRecord.objects.order_by("created_at", "id")
    assert [(r.endpoint, r.end_user, r.metadata) for r in records] == [
        ("images.edits", "bob", {"feature": "hat"}),
        ("images.edits", "", {"feature": "scarf", "team.name": "design"}),
    ]


def test_the_upstream_gets_a_stable_hash_of_the_user_and_no_metadata(
    client: APIClient,
    outsider: APIClient,
    api_key: CreatedKey,
    outsider_key: CreatedKey,
    remote_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    body = {
        "model": "remote",
        "prompt": "a fox",
        "size": "1024x1024",
        "user": RAW_USER,
        "metadata": {"feature": "secret-feature-name"},
    }
    assert _post(client, body).status_code == 200
    assert _post(client, body).status_code == 200
    assert _post(outsider, body).status_code == 200
    first, second, other = fake_upstream.requests
    ours = end_user_id(api_key.key.workspace_id, RAW_USER)
    theirs = end_user_id(outsider_key.key.workspace_id, RAW_USER)
    assert len(ours) == 32 and ours != theirs
    assert first.body == {
        "model": "gpt-image-2",
        "prompt": "a fox",
        "n": 1,
        "size": "1024x1024",
        "user": ours,
    }
    assert second.body["user"] == ours, "the same end user is the same id on every request"
    assert other.body["user"] == theirs, "another workspace's end user of that name is not"
    for recorded in (first, second, other):
        _never_raw(recorded, RAW_USER, "secret-feature-name", "metadata")
    assert set(UsageRecord.objects.values_list("end_user", flat=True)) == {RAW_USER}


def test_a_multipart_edit_through_the_sdk_sends_the_hash_and_no_metadata(
    live_server, api_key: CreatedKey, remote_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    sdk = OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key.secret, max_retries=0)
    result = sdk.images.edit(
        model="remote",
        image=("a.png", png(64, 64), "image/png"),
        prompt="a hat",
        size="1024x1024",
        user=RAW_USER,
        extra_body={"metadata": {"feature": "secret-feature-name"}},  # metadata[feature]=…
    )
    assert len(result.data or []) == 1
    [recorded] = fake_upstream.requests
    fields = {p.name: p.data.decode() for p in form_parts(recorded) if p.filename is None}
    assert fields == {
        "model": "gpt-image-2",
        "prompt": "a hat",
        "n": "1",
        "size": "1024x1024",
        "user": end_user_id(api_key.key.workspace_id, RAW_USER),
    }
    _never_raw(recorded, RAW_USER, "secret-feature-name", "metadata")
    # The live server writes the record once the response has gone out.
    wait_for(UsageRecord.objects.exists, timeout=10, what="the edit's usage record")
    [record] = UsageRecord.objects.all()
    assert (record.end_user, record.metadata) == (RAW_USER, {"feature": "secret-feature-name"})


def test_a_json_edit_sends_the_hash_and_no_metadata(
    client: APIClient, api_key: CreatedKey, remote_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png(64, 64)).decode()
    body = {
        "model": "remote",
        "prompt": "a hat",
        "size": "1024x1024",
        "images": [{"image_url": data_url}],
        "user": RAW_USER,
        "metadata": {"feature": "secret-feature-name"},
    }
    response = client.post(EDIT, json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    [recorded] = fake_upstream.requests
    fields = {p.name: p.data.decode() for p in form_parts(recorded) if p.filename is None}
    assert fields["user"] == end_user_id(api_key.key.workspace_id, RAW_USER)
    _never_raw(recorded, RAW_USER, "secret-feature-name", "metadata")
    [record] = UsageRecord.objects.all()
    assert (record.end_user, record.metadata) == (RAW_USER, {"feature": "secret-feature-name"})
