"""Operator admin for guardrail policies: friendly fields for the JSON lists, saves through
the guardrail services (checked and audited), and a "test this policy" box on the change page.
"""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse

from routing.guardrails import matching
from routing.guardrails.check import Trial, try_policy
from routing.guardrails.policies import PolicyInvalid, check
from routing.guardrails.services import (
    FIELDS,
    guardrail_create,
    guardrail_delete,
    guardrail_update,
)
from routing.models import GuardrailPolicy
from tenants.audit import operator_actor

MAX_TEST_PROMPT_CHARS = 32_000  # about what an image prompt can be; the box is not a bulk tool
_DETECTOR_LABELS = {
    "email": "Email addresses",
    "phone": "Phone numbers",
    "payment_card": "Payment card numbers (Luhn-checked)",
    "iban": "IBANs (checksum-checked)",
}
# The message style (admin CSS) a verdict is shown in.
_VERDICT_LEVEL = {"block": "error", "flag": "warning", "unavailable": "warning", "pass": "success"}


def _actor(request: HttpRequest) -> str:
    return operator_actor(request.user.get_username())


class LinesField(forms.CharField):
    """A list of strings edited as a textarea, one entry a line (blank lines dropped)."""

    widget = forms.Textarea(attrs={"rows": 6, "cols": 80, "style": "font-family: monospace"})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value)
        return [line.strip() for line in (text or "").splitlines() if line.strip()]


class GuardrailPolicyForm(forms.ModelForm[GuardrailPolicy]):
    applies_to = forms.MultipleChoiceField(
        choices=GuardrailPolicy.Route.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every route (jobs run as generations and edits).",
    )
    patterns = LinesField(
        required=False,
        help_text="keywords: one word or phrase a line (whole words, any case or accent). "
        "regex: one RE2 pattern a line, matched in the prompt as sent (start with (?i) to "
        "ignore case); no backreferences or lookaround.",
    )
    detectors = forms.MultipleChoiceField(
        choices=[(name, _DETECTOR_LABELS.get(name, name)) for name in matching.PII_DETECTORS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="pii: the kinds of personal data looked for. None ticked: all of them.",
    )
    # Declared, not derived: the model field's callable default would add a hidden "initial"
    # input, and a form posted without it would count as a change (and an audit row).
    categories = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text=GuardrailPolicy._meta.get_field("categories").help_text,
    )

    class Meta:
        model = GuardrailPolicy
        fields = ["workspace", *FIELDS]

    def clean_categories(self) -> dict[str, Any]:
        return self.cleaned_data.get("categories") or {}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        # The policy as it would be saved, checked by the rules the services apply on save.
        candidate = copy.copy(self.instance)
        construct_instance(self, candidate, fields=self._meta.fields)  # a field in error: as was
        try:
            check(candidate)
        except PolicyInvalid as error:
            self.add_error(error.field if error.field in self.fields else None, error.message)
        if "name" in data and self._name_taken(candidate):
            self.add_error("name", f"A guardrail named '{candidate.name}' already exists here.")
        return data

    def _name_taken(self, candidate: GuardrailPolicy) -> bool:
        # The unique constraints are partial (platform / workspace) and the workspace is read-only
        # on a change, so the form's own constraint validation does not see every clash.
        same = GuardrailPolicy.objects.filter(workspace=candidate.workspace, name=candidate.name)
        return same.exclude(pk=candidate.pk).exists() if candidate.pk else same.exists()


class ScopeFilter(admin.SimpleListFilter):
    title = "scope"
    parameter_name = "scope"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("platform", "Platform"), ("workspace", "A workspace")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[GuardrailPolicy]
    ) -> QuerySet[GuardrailPolicy]:
        if self.value() in ("platform", "workspace"):
            return queryset.filter(workspace__isnull=self.value() == "platform")
        return queryset


@admin.register(GuardrailPolicy)
class GuardrailPolicyAdmin(admin.ModelAdmin[GuardrailPolicy]):
    form = GuardrailPolicyForm
    change_form_template = "admin/routing/guardrailpolicy/change_form.html"
    list_display = ["name", "scope", "kind", "action", "enabled", "updated_at"]
    list_filter = ["kind", "action", "enabled", ScopeFilter]
    list_select_related = ["workspace"]
    search_fields = ["name", "workspace__slug", "public_id"]
    autocomplete_fields = ["workspace", "credential"]
    readonly_fields = ["public_id", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["workspace", "name", "kind", "action", "applies_to", "enabled"]}),
        ("Keywords and regular expressions", {"fields": ["patterns"]}),
        ("Personal data", {"fields": ["detectors"]}),
        (
            "Moderation",
            {
                "fields": [
                    "credential",
                    "moderation_model",
                    "categories",
                    "check_prompt",
                    "check_output",
                    "allow_partial",
                    "charge_withheld",
                    "timeout_seconds",
                    "fail_open",
                ],
                "description": "Only for kind moderation: OpenAI's moderation endpoint, called "
                "with the credential below (a platform one, or the policy's workspace's own).",
            },
        ),
        (None, {"fields": ["public_id", "created_at", "updated_at"]}),
    ]

    @admin.display(description="Scope", ordering="workspace__slug")
    def scope(self, obj: GuardrailPolicy) -> str:
        return obj.workspace.slug if obj.workspace_id and obj.workspace else "platform"

    def get_readonly_fields(
        self, request: HttpRequest, obj: GuardrailPolicy | None = None
    ) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        # A policy does not move between scopes: delete it and create it in the other.
        return [*fields, "workspace"] if obj else fields

    def save_model(
        self, request: HttpRequest, obj: GuardrailPolicy, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        if not change:
            fields = {name: data[name] for name in FIELDS if name in data}
            created = guardrail_create(
                actor=_actor(request), workspace=data["workspace"], fields=fields
            )
            obj.pk, obj.public_id = created.pk, created.public_id
            return
        changed = {name: data[name] for name in form.changed_data if name in FIELDS}
        if changed:
            # Updated from the stored row, so that the audit row's "before" is what was saved.
            stored = GuardrailPolicy.objects.select_related("workspace").get(pk=obj.pk)
            guardrail_update(actor=_actor(request), policy=stored, fields=changed)

    def delete_model(self, request: HttpRequest, obj: GuardrailPolicy) -> None:
        guardrail_delete(actor=_actor(request), policy=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[GuardrailPolicy]) -> None:
        for policy in queryset.select_related("workspace"):
            guardrail_delete(actor=_actor(request), policy=policy)

    # --- "test this policy" ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        test = path(
            "<path:object_id>/test/",
            self.admin_site.admin_view(self.test_view),
            name="{}_{}_test".format(*info),
        )
        return [test, *super().get_urls()]  # before the change page's catch-all pattern

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {
            "guardrail_can_test": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """What the saved policy would do with the posted prompt, shown on the change page."""
        policy = self.get_object(request, object_id)
        if policy is None:
            raise Http404("No such guardrail policy.")
        if not self.has_change_permission(request, policy):
            raise PermissionDenied
        change_url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[policy.pk]
        )
        if request.method != "POST":
            return HttpResponseRedirect(change_url)
        prompt = str(request.POST.get("prompt", ""))[:MAX_TEST_PROMPT_CHARS]
        trial: Trial = try_policy(policy, prompt)
        # The change page as a GET renders it (the policy form is not bound to this POST);
        # its own form still posts to the change URL.
        page_request = copy.copy(request)
        page_request.method = "GET"
        context = {
            "guardrail_trial": trial,
            "guardrail_verdict_level": _VERDICT_LEVEL.get(trial.action, "info"),
            "guardrail_prompt": prompt,
        }
        return self.change_view(page_request, object_id, change_url, context)
