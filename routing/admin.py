"""Operator admin for routing: credentials (write-only secrets), aliases with their deployments."""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from billing import pricing
from routing import selectors, services
from routing.models import Deployment, ModelAlias, ProviderCredential
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
            "free",
            "enabled",
        ]

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
    readonly_fields = ["public_id", "masked_secret", "created_at", "updated_at"]
    autocomplete_fields = ["workspace"]

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


class DeploymentInline(admin.TabularInline[Deployment, ModelAlias]):
    model = Deployment
    form = DeploymentForm
    extra = 0
    autocomplete_fields = ["credential"]


@admin.register(ModelAlias)
class ModelAliasAdmin(UnpricedWarningMixin, admin.ModelAdmin[ModelAlias]):
    list_display = ["name", _scope, "deployment_count", "enabled", "updated_at"]
    list_filter = ["enabled", "workspace"]
    list_select_related = ["workspace"]
    search_fields = ["name", "workspace__slug", "public_id"]
    readonly_fields = ["public_id", "created_at", "updated_at"]
    autocomplete_fields = ["workspace"]
    inlines = [DeploymentInline]

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


@admin.register(Deployment)
class DeploymentAdmin(UnpricedWarningMixin, admin.ModelAdmin[Deployment]):
    list_display = [
        "alias",
        "credential",
        "upstream_model",
        "priced",
        "free",
        "priority",
        "weight",
        "enabled",
    ]
    list_filter = ["enabled", "free", "credential__free", "credential__provider"]
    list_select_related = ["alias", "alias__workspace", "credential", "credential__workspace"]
    search_fields = ["upstream_model", "alias__name", "credential__name"]
    autocomplete_fields = ["alias", "credential"]
    readonly_fields = ["public_id", "created_at", "updated_at"]

    form = DeploymentForm

    @admin.display(description="Priced", boolean=True)
    def priced(self, obj: Deployment) -> bool:
        """A deployment without a price is refused unless it or its credential is free."""
        return pricing.has_price(obj.credential.provider, obj.upstream_model)

    def save_model(self, request: HttpRequest, obj: Deployment, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(
            actor=_actor(request),
            event="deployment.saved",
            target=obj,
            workspace=obj.alias.workspace,
            data={"fields": form.changed_data},
        )
