"""Passthrough discovery: `GET /v1/passthrough` and `GET /api/v1/passthrough` list what a key
may call raw — prefix, paths, where the key goes, how image routes are charged, the
operator's notes — and nothing of a credential's secret, base URL or header values."""

from typing import Any

import pytest
from django.contrib import admin as django_admin
from django.test import Client
from django.urls import reverse
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from aperture.errors import NotFound
from routing import selectors
from routing import services as routing_services
from routing.admin import ProviderCredentialAdmin
from routing.models import Provider, ProviderCredential
from routing.passthrough import discovery
from routing.passthrough.notes import render_notes
from routing.providers.registry import ADAPTERS
from tenants import services
from tenants.authentication import presented_native_secret
from tenants.key_auth import authenticate_secret
from tenants.models import AuditEvent, Team, Workspace
from tenants.services import CreatedKey
from tests.conftest import ACTOR
from tests.openapi_check import SchemaCheckedClient, checked_client_for

ACME_NOTES = (
    "Generate with `POST /gemini/v1beta/models/{model}:generateContent`.\n\n"
    "```sh\n"
    'curl "$APERTURE/gemini/v1beta/models/gemini-2.5-flash-image:generateContent" \\\n'
    '  -H "x-goog-api-key: $APERTURE_KEY" -d \'{"contents": []}\'\n'
    "```\n"
)
# What must never appear in any response: secrets (and their masked form), base URL hosts,
# extra headers' values.
SECRETS = {
    "platform-gemini": "gk-platform-gemini-secret-T9V8",
    "acme-gemini": "gk-acme-gemini-secret-A1B2",
    "openai-images": "sk-platform-openai-secret-K4J5",
    "lab": "sk-lab-stability-secret-W2E3",
    "globex-azure": "az-globex-secret-G7H8",
}
HEADER_VALUES = ("platform-project-7731", "acme-tenant-5521")
HIDDEN = (*SECRETS.values(), *HEADER_VALUES, "upstream.example", "azure.example", "••••")
ACCEPTED = [
    "Authorization: Bearer <key>",
    "api-key: <key>",
    "x-api-key: <key>",
    "x-goog-api-key: <key>",
    "?key=<key>",
]


def _credential(name: str, provider: str, **fields: Any) -> ProviderCredential:
    fields.setdefault("passthrough_enabled", True)
    return routing_services.credential_create(actor=ACTOR, name=name, provider=provider, **fields)


@pytest.fixture
def globex(db: None) -> Workspace:
    return Workspace.objects.create(slug="globex-ws", name="Globex")


@pytest.fixture
def listed(workspace: Workspace, globex: Workspace) -> None:
    """acme's gemini shadows the platform's; a path-restricted and a free credential; ones
    that are not listed: disabled, passthrough off, shadowed by a closed one, local, another
    workspace's."""
    _credential(
        "gemini",
        Provider.GEMINI,
        secret=SECRETS["platform-gemini"],
        base_url="https://platform-gemini.upstream.example",
        extra_headers={"X-Goog-User-Project": "platform-project-7731"},
        passthrough_notes="The platform's Gemini.",
    )
    _credential(
        "gemini",
        Provider.GEMINI,
        workspace=workspace,
        secret=SECRETS["acme-gemini"],
        base_url="https://acme-gemini.upstream.example",
        extra_headers={"X-Acme-Tenant": "acme-tenant-5521"},
        passthrough_notes=ACME_NOTES,
    )
    _credential(
        "openai-images",
        Provider.OPENAI,
        secret=SECRETS["openai-images"],
        base_url="https://platform-openai.upstream.example",
        passthrough_path_prefixes=["/v1/images/"],
    )
    _credential(
        "lab",
        Provider.STABILITY,
        secret=SECRETS["lab"],
        base_url="https://lab-stability.upstream.example",
        passthrough_path_prefixes=["/v2beta/stable-image/"],
        free=True,
    )
    _credential(
        "retired",
        Provider.OPENAI,
        secret="sk-retired-0000000000",
        base_url="https://retired.upstream.example",
        enabled=False,
    )
    _credential(
        "replicate",
        Provider.REPLICATE,
        secret="r8-closed-0000000000",
        base_url="https://replicate.upstream.example",
        passthrough_enabled=False,
    )
    _credential(
        "openrouter",
        Provider.OPENROUTER,
        secret="sk-or-0000000000",
        base_url="https://openrouter.upstream.example",
    )
    _credential(
        "openrouter",
        Provider.OPENROUTER,
        workspace=workspace,
        secret="sk-or-acme-0000000000",
        passthrough_enabled=False,
    )
    _credential("local-render", Provider.LOCAL, secret="")
    _credential(
        "globex-azure",
        Provider.AZURE,
        workspace=globex,
        secret=SECRETS["globex-azure"],
        base_url="https://globex.openai.azure.example",
        api_version="2025-04-01-preview",
    )


GEMINI_ROUTES = [
    {
        "method": "POST",
        "path": "/v1[beta]/models/{model}:{generateContent|streamGenerateContent}",
        "pattern": (
            "/v1(?:beta)?/models/(?P<model>[^/:]+):(?:generateContent|streamGenerateContent)"
        ),
        "charge": "per_image",
    },
    {
        "method": "POST",
        "path": "/v1[beta]/models/*:predict[LongRunning]",
        "pattern": "/v1(?:beta)?/models/[^/:]+:predict(?:LongRunning)?",
        "charge": "refused",
    },
]


def _gemini(owner: str, extra_header: str, notes: str) -> dict[str, Any]:
    return {
        "name": "gemini",
        "prefix": "/gemini",
        "provider": "gemini",
        "owner": owner,
        "all_paths": True,
        "path_prefixes": [],
        "gateway_key": {"native": "x-goog-api-key: <key>", "accepted": ACCEPTED},
        "upstream_auth_header": "x-goog-api-key",
        "extra_headers": [extra_header],
        "free": False,
        "image_routes": GEMINI_ROUTES,
        "notes": notes,
    }


LAB = {
    "name": "lab",
    "prefix": "/lab",
    "provider": "stability",
    "owner": "platform",
    "all_paths": False,
    "path_prefixes": ["/v2beta/stable-image/"],
    "gateway_key": {"native": "Authorization: Bearer <key>", "accepted": ACCEPTED},
    "upstream_auth_header": "Authorization",
    "extra_headers": [],
    "free": True,
    # /v1/generation/** lies outside its paths; on a free credential nothing is refused.
    "image_routes": [
        {"method": "POST", "path": "/v2beta/**", "pattern": "/v2beta/.*", "charge": "free"}
    ],
    "notes": "",
}
OPENAI_IMAGES = {
    "name": "openai-images",
    "prefix": "/openai-images",
    "provider": "openai",
    "owner": "platform",
    "all_paths": False,
    "path_prefixes": ["/v1/images/"],
    "gateway_key": {"native": "Authorization: Bearer <key>", "accepted": ACCEPTED},
    "upstream_auth_header": "Authorization",
    "extra_headers": [],
    "free": False,
    "image_routes": [
        {
            "method": "POST",
            "path": "/v1/images/{generations|edits|variations}",
            "pattern": "/v1/images/(?:generations|edits|variations)",
            "charge": "per_image",
        }
    ],
    "notes": "",
}
ACME_LIST = [_gemini("workspace", "X-Acme-Tenant", ACME_NOTES), LAB, OPENAI_IMAGES]
# Another workspace: acme's closed openrouter does not shadow the platform's for it.
OPENROUTER = {
    "name": "openrouter",
    "prefix": "/openrouter",
    "provider": "openrouter",
    "owner": "platform",
    "all_paths": True,
    "path_prefixes": [],
    "gateway_key": {"native": "Authorization: Bearer <key>", "accepted": ACCEPTED},
    "upstream_auth_header": "Authorization",
    "extra_headers": [],
    "free": False,
    "image_routes": [
        {
            "method": "POST",
            "path": "/api/v1/images[/**]",
            "pattern": "/api/v1/images(?:/.*)?",
            "charge": "refused",
        },
        {
            "method": "POST",
            "path": "/api/v1/chat/**",
            "pattern": "/api/v1/chat/.*",
            "charge": "refused",
        },
    ],
    "notes": "",
}
PLATFORM_LIST = [
    _gemini("platform", "X-Goog-User-Project", "The platform's Gemini."),
    LAB,
    OPENAI_IMAGES,
    OPENROUTER,
]


def _nothing_hidden_in(content: bytes) -> None:
    for hidden in HIDDEN:
        assert hidden.encode() not in content, hidden


def _listing(key: str | None, data: list[dict[str, Any]], reason: str | None = None) -> dict:
    return {"object": "list", "key": key, "reason": reason, "data": data}


# --- GET /v1/passthrough ------------------------------------------------------------------


def test_a_key_lists_its_workspaces_credentials_over_the_platforms_and_nothing_closed(
    listed: None, api_key: CreatedKey
) -> None:
    response = checked_client_for(api_key.secret).get("/v1/passthrough")
    assert response.status_code == 200
    assert response.json() == _listing(api_key.key.public_id, ACME_LIST)
    _nothing_hidden_in(response.content)


def test_the_list_is_exactly_the_names_a_passthrough_call_would_reach(
    listed: None, api_key: CreatedKey
) -> None:
    principal = authenticate_secret(api_key.secret)
    reachable = []
    for name in sorted(set(ProviderCredential.objects.values_list("name", flat=True))):
        try:
            target = selectors.passthrough_target(principal, name)
        except NotFound:
            continue
        if target.provider != Provider.LOCAL:  # found, but a call is refused: no native API
            reachable.append(name)
    listing = discovery.listing_for_principal(principal)
    assert [entry.name for entry in listing.data] == reachable == ["gemini", "lab", "openai-images"]


def test_a_key_limited_to_some_models_gets_an_empty_list_and_the_reason(
    listed: None, team: Team
) -> None:
    limited = services.key_create(actor=ACTOR, team=team, name="l", allowed_aliases=["a"])
    response = checked_client_for(limited.secret).get("/v1/passthrough")
    assert response.status_code == 200
    assert response.json() == _listing(limited.key.public_id, [], discovery.ALIAS_LIMITED)


def test_the_listing_reads_the_credentials_in_one_query(
    listed: None, workspace: Workspace, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        listing = discovery.listing_for_workspace(workspace.pk)
    assert len(listing.data) == 3


def test_keys_without_the_images_scope_or_with_no_key_are_refused(
    listed: None, admin_key: CreatedKey
) -> None:
    refused = checked_client_for(admin_key.secret).get("/v1/passthrough")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "missing_scope"
    anonymous = SchemaCheckedClient().get("/v1/passthrough")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"


# --- GET /api/v1/passthrough --------------------------------------------------------------


def test_management_lists_for_the_workspace_and_for_any_of_its_keys(
    listed: None, admin: SchemaCheckedClient, api_key: CreatedKey
) -> None:
    whole = admin.get("/api/v1/passthrough")
    assert whole.status_code == 200
    assert whole.json() == _listing(None, ACME_LIST)
    one = admin.get("/api/v1/passthrough", {"key": api_key.key.public_id})
    assert one.status_code == 200
    assert one.json() == _listing(api_key.key.public_id, ACME_LIST)
    for response in (whole, one):
        _nothing_hidden_in(response.content)


def test_management_says_why_a_key_may_not_pass_through(
    listed: None, admin: SchemaCheckedClient, admin_key: CreatedKey, team: Team
) -> None:
    limited = services.key_create(actor=ACTOR, team=team, name="l", allowed_aliases=["a"]).key
    revoked = services.key_revoke(
        actor=ACTOR, key=services.key_create(actor=ACTOR, team=team, name="r").key
    )
    expected = {
        limited.public_id: discovery.ALIAS_LIMITED,
        revoked.public_id: "This API key is revoked.",
        admin_key.key.public_id: discovery.NO_IMAGES_SCOPE,
    }
    for key_id, reason in expected.items():
        response = admin.get("/api/v1/passthrough", {"key": key_id})
        assert response.status_code == 200
        assert response.json() == _listing(key_id, [], reason)
    gone = Team.objects.create(workspace=team.workspace, slug="gone", name="Gone")
    archived = services.key_create(actor=ACTOR, team=gone, name="a").key
    services.team_archive(actor=ACTOR, team=gone)
    response = admin.get("/api/v1/passthrough", {"key": archived.public_id})
    assert response.json() == _listing(archived.public_id, [], discovery.TEAM_ARCHIVED)


def test_another_workspaces_key_is_not_found_and_its_admin_sees_only_the_platforms(
    listed: None,
    admin: SchemaCheckedClient,
    outsider_admin: SchemaCheckedClient,
    api_key: CreatedKey,
    outsider_key: CreatedKey,
) -> None:
    for client, key_id in (
        (admin, outsider_key.key.public_id),
        (outsider_admin, api_key.key.public_id),
    ):
        response = client.get("/api/v1/passthrough", {"key": key_id})
        assert response.status_code == 404
        assert response.json()["error"] == {
            "message": f"No key '{key_id}' in this workspace.",
            "type": "invalid_request_error",
            "param": "key",
            "code": "not_found",
        }
    own = outsider_admin.get("/api/v1/passthrough")
    assert own.status_code == 200
    assert own.json() == _listing(None, PLATFORM_LIST)
    _nothing_hidden_in(own.content)


def test_a_team_manager_may_ask_about_its_teams_keys_only(
    listed: None, manager: SchemaCheckedClient, api_key: CreatedKey, other_team: Team
) -> None:
    own = manager.get("/api/v1/passthrough", {"key": api_key.key.public_id})
    assert own.status_code == 200
    assert own.json() == _listing(api_key.key.public_id, ACME_LIST)
    research = services.key_create(actor=ACTOR, team=other_team, name="research app").key
    other = manager.get("/api/v1/passthrough", {"key": research.public_id})
    assert other.status_code == 404
    assert other.json()["error"]["param"] == "key"


def test_a_secret_sent_as_the_key_id_is_refused_and_not_echoed(
    listed: None, admin: SchemaCheckedClient, api_key: CreatedKey
) -> None:
    response = admin.get("/api/v1/passthrough", {"key": api_key.secret})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "key"
    assert api_key.secret.encode() not in response.content
    unknown = admin.get("/api/v1/passthrough", {"kee": "x"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "kee"


def test_an_images_key_may_not_use_the_management_route(listed: None, api_key: CreatedKey) -> None:
    response = checked_client_for(api_key.secret).get("/api/v1/passthrough")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_scope"


# --- what the entries say -----------------------------------------------------------------

READABLE = {
    ("openai", "/v1/images/(?:generations|edits|variations)"): (
        "/v1/images/{generations|edits|variations}"
    ),
    ("azure", "/openai/deployments/(?P<model>[^/]+)/images/(?:generations|edits)"): (
        "/openai/deployments/{model}/images/{generations|edits}"
    ),
    ("gemini", GEMINI_ROUTES[0]["pattern"]): GEMINI_ROUTES[0]["path"],
    ("gemini", GEMINI_ROUTES[1]["pattern"]): GEMINI_ROUTES[1]["path"],
    ("xai", "/v1/images/(?:generations|edits)"): "/v1/images/{generations|edits}",
    ("seedream", "/api/v3/images/.*"): "/api/v3/images/**",
    ("openrouter", "/api/v1/images(?:/.*)?"): "/api/v1/images[/**]",
    ("openrouter", "/api/v1/chat/.*"): "/api/v1/chat/**",
    ("stability", "/v2beta/.*"): "/v2beta/**",
    ("stability", "/v1/generation/.*"): "/v1/generation/**",
    ("bfl", "/v1/(?!get_result).*"): "/v1/** (not /v1/get_result**)",
    ("replicate", "/v1/predictions"): "/v1/predictions",
    ("replicate", "/v1/(?:models|deployments)/.*/predictions"): (
        "/v1/{models|deployments}/**/predictions"
    ),
    ("zai", "/api/paas/v4/images/.*"): "/api/paas/v4/images/**",
}


def test_every_declared_image_route_reads_plainly() -> None:
    declared = {
        (name, route.pattern): route.path
        for name in ADAPTERS
        for route in discovery.native_image_routes(name, free=False)
    }
    assert declared == READABLE
    # A pattern the translation does not know is shown as it is.
    assert discovery.readable_path(r"/v1/file\.png") == r"/v1/file\.png"


@pytest.mark.parametrize(
    ("provider", "prefixes", "paths"),
    [
        ("openai", ("/v1/images/",), ["/v1/images/{generations|edits|variations}"]),
        ("openai", ("/v1/images",), ["/v1/images/{generations|edits|variations}"]),
        ("openai", ("/v1/models", "/v1/imagesX/"), []),
        ("openai", ("/",), ["/v1/images/{generations|edits|variations}"]),
        ("gemini", ("/v1beta/models/",), [r["path"] for r in GEMINI_ROUTES]),
        ("stability", ("/v1/generation/",), ["/v1/generation/**"]),
        ("bfl", ("/v1/flux-pro",), ["/v1/** (not /v1/get_result**)"]),
    ],
)
def test_only_the_image_routes_within_a_credentials_paths_are_listed(
    provider: str, prefixes: tuple[str, ...], paths: list[str]
) -> None:
    routes = discovery.native_image_routes(provider, free=False, path_prefixes=prefixes)
    assert [route.path for route in routes] == paths


def _request_with(location: str, secret: str) -> Request:
    if location.startswith("?"):
        param = location[1:].split("=", 1)[0]
        return Request(APIRequestFactory().get("/gemini/v1beta/models", {param: secret}))
    header, value = location.split(": ", 1)
    meta = "HTTP_" + header.upper().replace("-", "_")
    wsgi = APIRequestFactory().get("/gemini/v1beta/models")
    wsgi.META[meta] = value.replace("<key>", secret)
    return Request(wsgi)


def test_every_place_listed_for_the_key_is_one_passthrough_reads_it_from(
    api_key: CreatedKey,
) -> None:
    assert list(discovery.ACCEPTED_KEY_LOCATIONS) == ACCEPTED
    for location in ACCEPTED:
        assert presented_native_secret(_request_with(location, api_key.secret)) == api_key.secret
    natives = {name: discovery.gateway_key(name).native for name in ADAPTERS}
    assert natives["azure"] == "api-key: <key>"
    assert natives["gemini"] == "x-goog-api-key: <key>"
    assert natives["bfl"] == "Authorization: Bearer <key>"  # its x-key is not read
    assert set(natives.values()) <= set(ACCEPTED)


# --- notes ----------------------------------------------------------------------------------

UNSAFE_NOTES = (
    "# Imagen\n\n"
    "Send **JSON**.<script>alert('notes')</script>\n\n"
    '[docs](javascript:alert(1)) <a href="https://ai.google.dev/" onclick="steal()">api</a>\n\n'
    '<img src="https://tracker.example/p.png" onerror="steal()">\n'
)
SAFE_HTML = (
    "<h1>Imagen</h1>\n"
    "<p>Send <strong>JSON</strong>.</p>\n"
    '<p><a rel="noopener noreferrer nofollow">docs</a> '
    '<a href="https://ai.google.dev/" rel="noopener noreferrer nofollow">api</a></p>\n'
    "<p></p>"
)


def test_notes_render_as_markdown_without_scripts_handlers_or_javascript_links() -> None:
    assert render_notes(UNSAFE_NOTES) == SAFE_HTML
    assert render_notes("  \n") == ""


def test_the_admin_saves_the_notes_and_previews_them_safely(
    admin_client: Client, listed: None
) -> None:
    credential = ProviderCredential.objects.get(name="openai-images")
    change_url = reverse("admin:routing_providercredential_change", args=[credential.pk])
    form = {
        "name": "openai-images",
        "provider": "openai",
        "base_url": "https://platform-openai.upstream.example",
        "secret": "",
        "api_version": "",
        "extra_headers": "{}",
        "options": "{}",
        "passthrough_enabled": "on",
        "passthrough_path_prefixes": '["/v1/images/"]',
        "passthrough_notes": UNSAFE_NOTES,
        "enabled": "on",
    }
    saved = admin_client.post(change_url, {**form, "_continue": "1"}, follow=True)
    assert saved.redirect_chain == [(change_url, 302)]
    credential.refresh_from_db()
    assert credential.passthrough_notes == UNSAFE_NOTES.strip()  # as Django's forms keep text
    event = AuditEvent.objects.filter(event="credential.updated", target_id=credential.public_id)
    assert "passthrough_notes" in event.get().data["fields"]
    page = saved.content.decode()
    assert SAFE_HTML in page
    # The text area shows the notes escaped; the preview has none of what was unsafe.
    for unsafe in ("<script>alert(", 'href="javascript:', 'onclick="steal()"', 'onerror="steal()"'):
        assert unsafe not in page, unsafe
    assert "&lt;script&gt;alert(&#x27;notes&#x27;)&lt;/script&gt;" in page  # the text area
    model_admin = ProviderCredentialAdmin(ProviderCredential, django_admin.site)
    assert model_admin.notes_preview(credential) == SAFE_HTML


def test_notes_set_by_a_service_update_are_listed_on_the_next_request(
    listed: None, api_key: CreatedKey
) -> None:
    credential = ProviderCredential.objects.get(name="lab")
    routing_services.credential_update(
        actor=ACTOR,
        credential=credential,
        fields={"passthrough_notes": "Use `/v2beta/stable-image/generate/core`."},
    )
    response = checked_client_for(api_key.secret).get("/v1/passthrough")
    lab = next(entry for entry in response.json()["data"] if entry["name"] == "lab")
    assert lab["notes"] == "Use `/v2beta/stable-image/generate/core`."
