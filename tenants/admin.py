"""Operator admin for tenancy. Saves and actions go through tenants.services."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import ModelAdmin, TabularInline
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from tenants import services
from tenants.audit import audit_record, operator_actor
from tenants.models import ApiKey, AuditEvent, Team, Workspace


def _actor(request: HttpRequest) -> str:
    return operator_actor(request.user.get_username())


class TeamInline(TabularInline[Team, Workspace]):
    model = Team
    fields = ["slug", "name", "archived_at"]
    extra = 0
    show_change_link = True


@admin.register(Workspace)
class WorkspaceAdmin(ModelAdmin[Workspace]):
    list_display = ["slug", "name", "status", "price_multiplier", "team_count", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name", "public_id"]
    readonly_fields = ["public_id", "dashboard", "created_at", "updated_at"]
    inlines = [TeamInline]
    actions = ["suspend", "activate"]

    @admin.display(description="Dashboard")
    def dashboard(self, obj: Workspace) -> SafeString | str:
        """The admin's landing dashboard, narrowed to this workspace."""
        if obj.pk is None:
            return "-"
        url = f"{reverse('admin:index')}?workspace={obj.pk}"
        return format_html('<a href="{}">Requests, spend and errors of this workspace</a>', url)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workspace]:
        return super().get_queryset(request).annotate(_team_count=Count("teams"))

    @admin.display(description="Teams", ordering="_team_count")
    def team_count(self, obj: Workspace) -> int:
        return getattr(obj, "_team_count", 0)

    def save_model(self, request: HttpRequest, obj: Workspace, form: Any, change: bool) -> None:
        status_changed = change and "status" in form.changed_data
        new_status = obj.status
        if status_changed:
            obj.status = form.initial["status"]
        # A changed markup goes through its service: audited, and the keys' cache dropped.
        multiplier_changed = change and "price_multiplier" in form.changed_data
        new_multiplier = obj.price_multiplier
        if multiplier_changed:
            obj.price_multiplier = form.initial["price_multiplier"]
        obj.save()
        if status_changed:
            services.workspace_set_status(actor=_actor(request), workspace=obj, status=new_status)
        if multiplier_changed:
            services.workspace_set_price_multiplier(
                actor=_actor(request), workspace=obj, multiplier=new_multiplier
            )
        audit_record(
            actor=_actor(request),
            event="workspace.updated" if change else "workspace.created",
            target=obj,
            workspace=obj,
            data={"fields": form.changed_data},
        )

    @admin.action(description="Suspend selected workspaces")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Workspace]) -> None:
        for workspace in queryset:
            services.workspace_set_status(
                actor=_actor(request), workspace=workspace, status=Workspace.Status.SUSPENDED
            )

    @admin.action(description="Activate selected workspaces")
    def activate(self, request: HttpRequest, queryset: QuerySet[Workspace]) -> None:
        for workspace in queryset:
            services.workspace_set_status(
                actor=_actor(request), workspace=workspace, status=Workspace.Status.ACTIVE
            )


@admin.register(Team)
class TeamAdmin(ModelAdmin[Team]):
    list_display = ["slug", "name", "workspace", "archived_at", "created_at"]
    list_filter = ["workspace"]
    list_select_related = ["workspace"]
    search_fields = ["slug", "name", "workspace__slug", "public_id"]
    readonly_fields = ["public_id", "created_at", "updated_at"]
    autocomplete_fields = ["workspace"]

    def save_model(self, request: HttpRequest, obj: Team, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(
            actor=_actor(request),
            event="team.updated" if change else "team.created",
            target=obj,
            workspace=obj.workspace,
            data={"fields": form.changed_data},
        )
        if change and "archived_at" in form.changed_data:
            services.forget_cached_keys(obj.api_keys.values_list("public_id", flat=True))


class _AliasListField(forms.CharField):
    """Comma-separated alias names ↔ a list."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [part.strip() for part in text.split(",") if part.strip()]


class ApiKeyForm(ModelForm[ApiKey]):
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKey.Scope.IMAGES],
    )
    allowed_aliases = _AliasListField(
        required=False, help_text="Comma-separated alias names; empty allows every alias."
    )
    webhook_url = forms.URLField(
        max_length=2000,
        required=False,
        assume_scheme="https",
        help_text=ApiKey._meta.get_field("webhook_url").help_text,
    )

    class Meta:
        model = ApiKey
        fields = [
            "team",
            "name",
            "scopes",
            "allowed_aliases",
            "rpm_limit",
            "ipm_limit",
            "per_user_limit_images",
            "per_user_rpm",
            "expires_at",
            "webhook_url",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        team = data.get("team") or getattr(self.instance, "team", None)
        if "webhook_url" in self.changed_data and data.get("webhook_url") and team is not None:
            try:
                services.clean_key_webhook_url(team.workspace, data["webhook_url"])
            except ValidationError as refused:
                self.add_error(None, refused)
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(ModelAdmin[ApiKey]):
    form = ApiKeyForm
    list_display = [
        "name",
        "prefix",
        "team",
        "workspace",
        "scopes",
        "state",
        "last_used_at",
        "created_at",
    ]
    list_filter = ["workspace", "revoked_at"]
    list_select_related = ["team", "workspace"]
    search_fields = ["name", "public_id", "team__slug", "workspace__slug"]
    readonly_fields = [
        "prefix",
        "workspace",
        "last_used_at",
        "revoked_at",
        "created_by",
        "created_at",
    ]
    autocomplete_fields = ["team"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "team"] if obj else fields

    @admin.display(description="State")
    def state(self, obj: ApiKey) -> str:
        if obj.revoked_at:
            return "revoked"
        return "active" if obj.is_usable() else "expired"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            services.key_update(
                actor=_actor(request),
                key=obj,
                name=data["name"],
                scopes=data["scopes"],
                allowed_aliases=data["allowed_aliases"],
                webhook_url=(data["webhook_url"] or "")
                if "webhook_url" in form.changed_data
                else None,
            )
            return
        created = services.key_create(
            actor=_actor(request),
            team=data["team"],
            name=data["name"],
            scopes=data["scopes"],
            allowed_aliases=data["allowed_aliases"],
            rpm_limit=data["rpm_limit"],
            ipm_limit=data["ipm_limit"],
            per_user_limit_images=data["per_user_limit_images"],
            per_user_rpm=data["per_user_rpm"],
            expires_at=data["expires_at"],
            webhook_url=data["webhook_url"] or "",
        )
        obj.pk = created.key.pk
        request._aperture_new_secret = created.secret  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: Any = None
    ) -> HttpResponse:
        """Show the secret in this one response: it is not stored anywhere to show again."""
        secret = getattr(request, "_aperture_new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        key = ApiKey.objects.select_related("team").get(pk=obj.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": key,
            "secret": secret,
            "change_url": reverse("admin:tenants_apikey_change", args=[key.pk]),
            "title": "API key created",
        }
        return TemplateResponse(request, "admin/tenants/apikey/created.html", context)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.key_revoke(actor=_actor(request), key=key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(ModelAdmin[AuditEvent]):
    list_display = ["created_at", "actor", "event", "target_type", "target_id", "workspace"]
    list_filter = ["event", "workspace"]
    list_select_related = ["workspace"]
    search_fields = ["actor", "event", "target_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
