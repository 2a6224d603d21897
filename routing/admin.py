"""Operator admin for routing: credentials (write-only secrets), aliases with their deployments."""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe

from billing import pricing
from routing import health, health_report, selectors, services
from routing.models import Deployment, ModelAlias, ProviderCredential
from routing.passthrough.notes import render_notes
from routing.providers.auth import auth_for
from routing.providers.registry import AUTH
from tenants.audit import audit_record, operator_actor


def _actor(request: HttpRequest) -> str:
    return operator_actor(request.user.get_username())


@admin.display(description="Scope", ordering="workspace__slug")
def _scope(obj: ProviderCredential | ModelAlias) -> str:
    return obj.workspace.slug if obj.workspace_id and obj.workspace else "platform"


_LISTED_UNPRICED = 20  # the warning names this many deployments, then counts the rest


def _warn_unpriced(request: HttpRequest) -> None:
    """Name every deployment a request would be refused on (`model_not_priced`), so the
    operator adds its price or marks it free before a caller finds out."""
    refused = selectors.unpriced_deployments()
    if not refused:
        return
    names = "; ".join(selectors.unpriced_description(d) for d in refused[:_LISTED_UNPRICED])
    more = len(refused) - _LISTED_UNPRICED
    if more > 0:
        names += f"; and {more} more"
    messages.warning(
        request,
        f"{len(refused)} deployment(s) have no price and are refused (model_not_priced): "
        f"{names}. Add a price (Billing → Prices) or mark the deployment or its credential free.",
    )


class UnpricedWarningMixin:
    """Warns about unpriced deployments on the changelist and after a save: the changelist
    a save returns to warns by itself, other destinations (continue, add another) get it here."""

    model: type[Any]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response: HttpResponse = super().changelist_view(  # type: ignore[misc]
            request, extra_context
        )
        if request.method == "GET" and isinstance(response, TemplateResponse):
            _warn_unpriced(request)  # rendered lazily, so the message still shows on this page
        return response

    def _after_save(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        meta = self.model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        to_changelist = (
            isinstance(response, HttpResponseRedirect) and response.url.split("?")[0] == changelist
        )
        if not to_changelist:
            _warn_unpriced(request)
        return response

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: str | None = None
    ) -> HttpResponse:
        response = super().response_add(request, obj, post_url_continue)  # type: ignore[misc]
        return self._after_save(request, response)

    def response_change(self, request: HttpRequest, obj: Any) -> HttpResponse:
        response = super().response_change(request, obj)  # type: ignore[misc]
        return self._after_save(request, response)


def _default_roots() -> str:
    return json.dumps({name: a.default_base_url for name, a in AUTH.items() if a.default_base_url})


class CredentialForm(forms.ModelForm[ProviderCredential]):
    base_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text="The provider's root (adapters add the versioned path). Prefilled with the "
        "provider's default; empty saves the default (Azure has none: give your resource's).",
        widget=forms.URLInput(attrs={"data-defaults": _default_roots(), "size": 60}),
    )
    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the current secret.",
    )

    class Meta:
        model = ProviderCredential
        fields = [
            "workspace",
            "name",
            "provider",
            "base_url",
            "secret",
            "api_version",
            "extra_headers",
            "options",
            "passthrough_enabled",
            "passthrough_path_prefixes",
            "passthrough_notes",
            "free",
            "enabled",
        ]
        widgets = {
            "passthrough_notes": forms.Textarea(
                attrs={"rows": 12, "cols": 90, "style": "font-family: monospace"}
            )
        }

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        try:
            services.check_credential_name(name)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["name"]) from exc
        return name

    def clean_passthrough_path_prefixes(self) -> list[str]:
        prefixes = self.cleaned_data["passthrough_path_prefixes"] or []
        try:
            return services.clean_passthrough_prefixes(prefixes)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["passthrough_path_prefixes"]) from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        provider = data.get("provider")
        needs_root = isinstance(provider, str) and provider not in ("", "local")
        if needs_root and not data.get("base_url") and not auth_for(str(provider)).default_base_url:
            self.add_error("base_url", f"The {provider} provider has no default root; give one.")
        return data

    class Media:
        js = ("routing/credential_defaults.js",)


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(UnpricedWarningMixin, admin.ModelAdmin[ProviderCredential]):
    form = CredentialForm
    list_display = [
        "name",
        "provider",
        _scope,
        "base_url",
        "masked_secret",
        "passthrough_enabled",
        "free",
        "enabled",
        "updated_at",
    ]
    list_filter = ["provider", "enabled", "passthrough_enabled", "free", "workspace"]
    list_select_related = ["workspace"]
    search_fields = ["name", "base_url", "workspace__slug", "public_id"]
    readonly_fields = ["public_id", "masked_secret", "notes_preview", "created_at", "updated_at"]
    autocomplete_fields = ["workspace"]

    @admin.display(description="Passthrough notes preview (as saved)")
    def notes_preview(self, obj: ProviderCredential) -> str:
        html = render_notes(obj.passthrough_notes)
        # render_notes sanitises (nh3): no script, event handler or javascript: link remains.
        return mark_safe(html) if html else "-"  # noqa: S308

    def save_model(
        self, request: HttpRequest, obj: ProviderCredential, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        secret = data.get("secret") or ""
        if not change:
            created = services.credential_create(
                actor=_actor(request),
                workspace=data["workspace"],
                name=data["name"],
                provider=data["provider"],
                base_url=data["base_url"],
                secret=secret,
                api_version=data["api_version"],
                extra_headers=data["extra_headers"],
                options=data["options"],
                passthrough_enabled=data["passthrough_enabled"],
                passthrough_path_prefixes=data["passthrough_path_prefixes"],
                passthrough_notes=data["passthrough_notes"],
                free=data["free"],
                enabled=data["enabled"],
            )
            obj.pk = created.pk
            return
        changed = [f for f in form.changed_data if f not in ("secret", "workspace")]
        if changed:
            # The form already set the new values on obj; the service saves and audits them.
            services.credential_update(
                actor=_actor(request),
                credential=obj,
                fields={field: getattr(obj, field) for field in changed},
            )
        if secret:
            services.credential_rotate_secret(actor=_actor(request), credential=obj, secret=secret)


class DeploymentForm(forms.ModelForm[Deployment]):
    """Checks that the credential may serve the alias (platform alias → platform credential)."""

    class Meta:
        model = Deployment
        fields = [
            "alias",
            "credential",
            "upstream_model",
            "priority",
            "weight",
            "timeout_seconds",
            "connect_timeout_seconds",
            "options",
            "free",
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        alias = data.get("alias")
        if alias is None:  # inline: the formset has set the (possibly unsaved) parent alias
            try:
                alias = self.instance.alias
            except ObjectDoesNotExist:
                alias = None
        credential = data.get("credential")
        if alias is not None and credential is not None:
            services.check_deployment_scope(alias, credential)
        return data


class _HealthColumns:
    """A deployment's health in the admin (read for a whole page at once: see attach)."""

    @admin.display(description="Health")
    def health_state(self, obj: Deployment) -> str:
        """closed / open until … / half-open."""
        return health_report.of(obj).label if obj.pk else "-"

    @admin.display(description="Failures")
    def health_failures(self, obj: Deployment) -> str:
        """Failures counted in the current window (APERTURE_HEALTH_WINDOW_SECONDS)."""
        return str(health_report.of(obj).failures) if obj.pk else "-"

    @admin.display(description="Last error")
    def health_last_error(self, obj: Deployment) -> str:
        found = health_report.of(obj) if obj.pk else None
        if found is None or not found.last_error:
            return "-"
        return f"{found.last_error} ({health_report.when(found.last_failure_at)})"


_HEALTH_COLUMNS = ["health_state", "health_failures", "health_last_error"]


def _warn_if_per_process(request: HttpRequest) -> None:
    mode = health.mode()
    if mode != "shared":
        messages.warning(
            request,
            f"Deployment health is {mode}: this changed the state seen by this web process "
            "only. Share it across processes with Redis (REDIS_URL).",
        )


class _HealthFormSet(BaseInlineFormSet[Deployment, ModelAlias, forms.ModelForm[Deployment]]):
    """Reads the health of the alias's deployments at once, not once per row."""

    def get_queryset(self) -> QuerySet[Deployment]:
        fresh = not hasattr(self, "_queryset")
        queryset: QuerySet[Deployment] = super().get_queryset()
        if fresh:
            health_report.attach(queryset)  # evaluates it: the forms reuse these rows
        return queryset


class DeploymentInline(_HealthColumns, admin.TabularInline[Deployment, ModelAlias]):
    model = Deployment
    form = DeploymentForm
    formset = _HealthFormSet
    extra = 0
    autocomplete_fields = ["credential"]
    readonly_fields = _HEALTH_COLUMNS


@admin.register(ModelAlias)
class ModelAliasAdmin(UnpricedWarningMixin, admin.ModelAdmin[ModelAlias]):
    list_display = [
        "name",
        _scope,
        "deployment_count",
        "strategy",
        "max_attempts",
        "enabled",
        "updated_at",
    ]
    list_filter = ["enabled", "strategy", "workspace"]
    list_select_related = ["workspace"]
    search_fields = ["name", "workspace__slug", "public_id"]
    readonly_fields = ["public_id", "created_at", "updated_at"]
    autocomplete_fields = ["workspace"]
    inlines = [DeploymentInline]
    fieldsets = [
        (None, {"fields": ["workspace", "name", "description", "enabled"]}),
        ("Routing", {"fields": ["strategy", "max_attempts", "retry_after_timeout"]}),
        (None, {"fields": ["public_id", "created_at", "updated_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelAlias]:
        queryset: QuerySet[ModelAlias] = super().get_queryset(request)
        return queryset.annotate(_deployments=Count("deployments"))

    @admin.display(description="Deployments", ordering="_deployments")
    def deployment_count(self, obj: ModelAlias) -> int:
        return getattr(obj, "_deployments", 0)

    def save_model(self, request: HttpRequest, obj: ModelAlias, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(
            actor=_actor(request),
            event="alias.updated" if change else "alias.created",
            target=obj,
            workspace=obj.workspace,
            data={"fields": form.changed_data},
        )

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        for deployment in formset.new_objects + [d for d, _ in formset.changed_objects]:
            audit_record(
                actor=_actor(request),
                event="deployment.saved",
                target=deployment,
                workspace=form.instance.workspace,
                data={"model": deployment.upstream_model},
            )
        for deployment in formset.deleted_objects:
            audit_record(
                actor=_actor(request),
                event="deployment.deleted",
                target=("routing.deployment", deployment.public_id),
                workspace=form.instance.workspace,
            )


class _HealthChangeList(ChangeList):
    """Reads the health of the page's deployments at once, not once per row."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        health_report.attach(self.result_list)  # evaluates the page: the rows reuse it


_FORCE_OPEN_MAX_MINUTES = services.FORCE_OPEN_MAX_SECONDS // 60


class DeploymentActionForm(ActionForm):
    minutes = forms.CharField(
        required=False,
        initial="15",
        label="Minutes (force open):",
        widget=forms.TextInput(attrs={"size": 4}),
    )


@admin.register(Deployment)
class DeploymentAdmin(UnpricedWarningMixin, _HealthColumns, admin.ModelAdmin[Deployment]):
    list_display = [
        "alias",
        "credential",
        "upstream_model",
        "priced",
        "free",
        "priority",
        "weight",
        "timeouts",
        "enabled",
        *_HEALTH_COLUMNS,
    ]
    list_filter = ["enabled", "free", "credential__free", "credential__provider"]
    list_select_related = ["alias", "alias__workspace", "credential", "credential__workspace"]
    search_fields = ["upstream_model", "alias__name", "credential__name"]
    autocomplete_fields = ["alias", "credential"]
    readonly_fields = ["public_id", *_HEALTH_COLUMNS, "created_at", "updated_at"]
    actions = ["force_open", "force_closed"]
    action_form = DeploymentActionForm

    form = DeploymentForm

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _HealthChangeList

    @admin.display(description="Priced", boolean=True)
    def priced(self, obj: Deployment) -> bool:
        """A deployment without a price is refused unless it or its credential is free."""
        return pricing.has_price(obj.credential.provider, obj.upstream_model)

    @admin.display(description="Timeouts (connect / read)")
    def timeouts(self, obj: Deployment) -> str:
        return f"{obj.connect_timeout_seconds:g} s / {obj.timeout_seconds} s"

    @admin.action(description="Force open (take out of rotation for N minutes)")
    def force_open(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        try:
            minutes = int(str(request.POST.get("minutes") or "").strip())
        except ValueError:
            minutes = 0
        if not 1 <= minutes <= _FORCE_OPEN_MAX_MINUTES:
            self.message_user(
                request,
                f"Give the minutes to force open, 1 to {_FORCE_OPEN_MAX_MINUTES} (longer: "
                "disable the deployment). Nothing was changed.",
                messages.ERROR,
            )
            return
        until, count = 0.0, 0
        for deployment in queryset:
            until = services.deployment_force_open(
                actor=_actor(request), deployment=deployment, seconds=minutes * 60
            )
            count += 1
        self.message_user(
            request,
            f"{count} deployment(s) forced open until {health_report.when(until)}: requests "
            "skip them unless every deployment of their alias is open.",
            messages.SUCCESS,
        )
        _warn_if_per_process(request)

    @admin.action(description="Force closed (back into rotation now)")
    def force_closed(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        count = 0
        for deployment in queryset:
            services.deployment_force_closed(actor=_actor(request), deployment=deployment)
            count += 1
        self.message_user(
            request,
            f"{count} deployment(s) forced closed: back in rotation, failures forgotten.",
            messages.SUCCESS,
        )
        _warn_if_per_process(request)

    def save_model(self, request: HttpRequest, obj: Deployment, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(
            actor=_actor(request),
            event="deployment.saved",
            target=obj,
            workspace=obj.alias.workspace,
            data={"fields": form.changed_data},
        )


# Guardrail policies and async jobs have admin modules of their own; importing registers them.
from routing import guardrail_admin, job_admin  # noqa: E402, F401
