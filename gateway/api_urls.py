"""The management API under /api/v1/, its OpenAPI schema and the interactive docs."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from aperture import openapi  # noqa: F401 - registers the API key security scheme
from billing.api import alerts, budgets, usage
from routing.api import aliases, credentials, guardrails, passthrough
from tenants.api import audit, keys, teams

urlpatterns = [
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's init script as a file: no inline script, so the
    # page's Content-Security-Policy allows scripts from this origin only.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/workspace", teams.WorkspaceView.as_view(), name="api-workspace"),
    path(
        "api/v1/workspace/webhook-secret/rotate",
        teams.WebhookSecretRotateView.as_view(),
        name="api-workspace-webhook-secret-rotate",
    ),
    path("api/v1/teams", teams.TeamListView.as_view(), name="api-teams"),
    path("api/v1/teams/<str:team_id>", teams.TeamDetailView.as_view(), name="api-team"),
    path(
        "api/v1/teams/<str:team_id>/archive",
        teams.TeamArchiveView.as_view(),
        name="api-team-archive",
    ),
    path("api/v1/keys", keys.KeyListView.as_view(), name="api-keys"),
    path("api/v1/keys/<str:key_id>", keys.KeyDetailView.as_view(), name="api-key"),
    path("api/v1/keys/<str:key_id>/rotate", keys.KeyRotateView.as_view(), name="api-key-rotate"),
    path("api/v1/keys/<str:key_id>/revoke", keys.KeyRevokeView.as_view(), name="api-key-revoke"),
    path("api/v1/usage", usage.UsageRecordListView.as_view(), name="api-usage"),
    path("api/v1/usage/summary", usage.UsageSummaryView.as_view(), name="api-usage-summary"),
    path("api/v1/budgets", budgets.BudgetListView.as_view(), name="api-budgets"),
    path("api/v1/budgets/<str:budget_id>", budgets.BudgetDetailView.as_view(), name="api-budget"),
    path("api/v1/alerts", alerts.AlertListView.as_view(), name="api-alerts"),
    path("api/v1/aliases", aliases.AliasListView.as_view(), name="api-aliases"),
    path("api/v1/aliases/<str:alias_id>", aliases.AliasDetailView.as_view(), name="api-alias"),
    path("api/v1/credentials", credentials.CredentialListView.as_view(), name="api-credentials"),
    path(
        "api/v1/credentials/<str:credential_id>",
        credentials.CredentialDetailView.as_view(),
        name="api-credential",
    ),
    path(
        "api/v1/credentials/<str:credential_id>/rotate",
        credentials.CredentialRotateView.as_view(),
        name="api-credential-rotate",
    ),
    path(
        "api/v1/credentials/<str:credential_id>/test",
        credentials.CredentialTestView.as_view(),
        name="api-credential-test",
    ),
    path("api/v1/guardrails", guardrails.GuardrailListView.as_view(), name="api-guardrails"),
    path(
        "api/v1/guardrails/<str:guardrail_id>",
        guardrails.GuardrailDetailView.as_view(),
        name="api-guardrail",
    ),
    path(
        "api/v1/guardrails/<str:guardrail_id>/test",
        guardrails.GuardrailTestView.as_view(),
        name="api-guardrail-test",
    ),
    path("api/v1/passthrough", passthrough.PassthroughListView.as_view(), name="api-passthrough"),
    path("api/v1/audit-events", audit.AuditEventListView.as_view(), name="api-audit-events"),
]
