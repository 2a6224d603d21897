"""Operator admin for billing: prices, budgets (with this period's spend and their alert
settings), spend alerts, usage, rollups."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from aperture.errors import ApiError
from billing import alert_delivery, alerts, services
from billing.models import Budget, DailyUsage, Price, SpendAlert, UsageRecord
from billing.selectors import budget_status
from tenants.audit import audit_record, operator_actor


def usd(micro: int | None) -> str:
    return "—" if micro is None else f"${micro / 1_000_000:,.6f}".rstrip("0").rstrip(".")


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin[Price]):
    list_display = [
        "provider",
        "model_pattern",
        "size",
        "quality",
        "tier",
        "per_image",
        "token_rates",
        "extras",
        "note",
        "updated_at",
    ]
    list_filter = ["provider", "tier"]
    search_fields = ["provider", "model_pattern", "note"]

    @admin.display(description="Per image (or per megapixel: first + each further)")
    def per_image(self, obj: Price) -> str:
        if obj.first_megapixel_micro is not None:
            extra = usd(obj.extra_megapixel_micro or 0)
            return f"{usd(obj.first_megapixel_micro)} + {extra}/MP"
        return usd(obj.per_image_micro)

    @admin.display(description="Per input image / minimum")
    def extras(self, obj: Price) -> str:
        return f"{usd(obj.per_input_image_micro)} / {usd(obj.minimum_micro)}"

    @admin.display(description="Per 1M tokens (text in / image in / image out)")
    def token_rates(self, obj: Price) -> str:
        if not obj.token_priced:
            return "—"
        rates = (
            obj.text_input_per_mtok_micro,
            obj.image_input_per_mtok_micro,
            obj.image_output_per_mtok_micro,
        )
        return " / ".join(usd(rate) for rate in rates)

    def save_model(self, request: HttpRequest, obj: Price, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(
            actor=operator_actor(request.user.get_username()),
            event="price.updated" if change else "price.created",
            target=obj,
            data={"fields": form.changed_data},
        )


LIMIT_FIELDS = ("limit_micro", "limit_images")


class BudgetForm(forms.ModelForm[Budget]):
    alert_webhook_url = forms.URLField(
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text=Budget._meta.get_field("alert_webhook_url").help_text,
    )

    class Meta:
        model = Budget
        fields = [
            "workspace",
            "team",
            "key",
            "scope",
            "period",
            "limit_micro",
            "limit_images",
            *alerts.ALERT_FIELDS,
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        workspace = data.get("workspace") or getattr(self.instance, "workspace", None)
        changed = [f for f in alerts.ALERT_FIELDS if f in data and f in self.changed_data]
        if workspace is not None and changed:
            given = {f: data[f] if data[f] is not None else "" for f in changed}
            for name in ("alert_thresholds", "alert_emails"):
                if given.get(name) == "":
                    given[name] = []
            try:
                data.update(alerts.clean_alert_fields(workspace, given))
            except ValidationError as refused:
                self.add_error(None, refused)
        if self.instance.pk:  # a friendly error first; the save's conditional UPDATE decides
            status = budget_status(Budget.objects.get(pk=self.instance.pk))
            committed = {
                "limit_micro": status.spent_micro + status.reserved_micro,
                "limit_images": status.spent_images + status.reserved_images,
            }
            for field, spent in committed.items():
                new = data.get(field)
                if new is not None and new < spent:
                    self.add_error(
                        field,
                        f"This period has already spent or holds more than that limit ({spent}).",
                    )
        return data


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin[Budget]):
    form = BudgetForm
    list_display = [
        "__str__",
        "workspace",
        "scope",
        "period",
        "limit",
        "spent_this_period",
        "remaining",
        "images_this_period",
        "alerts_at",
    ]
    list_filter = ["scope", "period", "workspace"]
    list_select_related = ["workspace", "team", "key"]
    search_fields = ["workspace__slug", "team__slug", "key__public_id"]
    raw_id_fields = ["team", "key"]
    autocomplete_fields = ["workspace"]
    readonly_fields = [
        "period_start",
        "used_micro",
        "reserved_micro",
        "used_images",
        "reserved_images",
        "slices",
    ]

    @admin.display(description="Held as slices")
    def slices(self, obj: Budget) -> str:
        """Who holds what of `reserved` as budget slices (billing/leases.py): the gateway
        process, its amounts, whether it still admits from it, and when its lease ends."""
        leases = obj.leases.order_by("id") if obj.pk else []
        return (
            "; ".join(
                f"{lease.holder}: {usd(lease.amount_micro)}, {lease.images} images, "
                f"{'retired' if lease.retired else 'admitting'}, until "
                f"{lease.expires_at:%Y-%m-%d %H:%M:%S}Z"
                for lease in leases
            )
            or "—"
        )

    @admin.display(description="Alerts at")
    def alerts_at(self, obj: Budget) -> str:
        return ", ".join(f"{t}%" for t in obj.alert_thresholds) or "—"

    @admin.display(description="Limit")
    def limit(self, obj: Budget) -> str:
        parts = [usd(obj.limit_micro)] if obj.limit_micro is not None else []
        if obj.limit_images is not None:
            parts.append(f"{obj.limit_images} images")
        return ", ".join(parts)

    @admin.display(description="Spent (+ held)")
    def spent_this_period(self, obj: Budget) -> str:
        status = budget_status(obj)
        if status.period_start != obj.period_start:
            return usd(0)
        return f"{usd(status.spent_micro)} (+{usd(status.reserved_micro)})"

    @admin.display(description="Remaining")
    def remaining(self, obj: Budget) -> str:
        return usd(budget_status(obj).remaining_micro)

    @admin.display(description="Images (+ held)")
    def images_this_period(self, obj: Budget) -> str:
        status = budget_status(obj)
        if status.period_start != obj.period_start:
            return "0"
        return f"{status.spent_images} (+{status.reserved_images})"

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Before the admin's transaction: gateway processes give the budget's slices back
        # (billing/leases.py), so that the form's check and the save see what requests hold.
        if request.method == "POST" and object_id and object_id.isdigit():
            services.budget_reclaim(budget_id=int(object_id))
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        """A new budget is saved whole; a change writes only what changed, never the
        counters (requests move them meanwhile), and limits through the conditional UPDATE."""
        actor = operator_actor(request.user.get_username())
        if not change:
            super().save_model(request, obj, form, change)
            audit_record(
                actor=actor,
                event="budget.created",
                target=obj,
                workspace=obj.workspace,
                data={"fields": form.changed_data},
            )
            return
        limits = {f: form.cleaned_data[f] for f in LIMIT_FIELDS if f in form.changed_data}
        alert_settings = {
            f: form.cleaned_data[f] for f in alerts.ALERT_FIELDS if f in form.changed_data
        }
        others = [f for f in form.changed_data if f not in LIMIT_FIELDS and f not in alert_settings]
        if alert_settings:
            alerts.budget_set_alerts(
                actor=actor, budget=Budget.objects.get(pk=obj.pk), fields=alert_settings
            )
        if others:
            Budget.objects.filter(pk=obj.pk).update(
                **{f: getattr(obj, f) for f in others}, updated_at=timezone.now()
            )
            audit_record(
                actor=actor,
                event="budget.updated",
                target=obj,
                workspace=obj.workspace,
                data={"fields": others},
            )
        if limits:
            try:
                services.budget_change_limits(
                    actor=actor,
                    budget=Budget.objects.get(pk=obj.pk),
                    fields=limits,
                    within_enclosing=False,
                )
            except ApiError as refused:  # spend moved past the limit since the form's check
                messages.error(request, refused.message)


class _ReadOnly(admin.ModelAdmin[Any]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SpendAlert)
class SpendAlertAdmin(_ReadOnly):
    list_display = [
        "fired_at",
        "workspace",
        "budget",
        "threshold_percent",
        "spent",
        "images",
        "webhook_status",
        "webhook_attempts",
        "email_status",
    ]
    list_filter = ["webhook_status", "email_status", "threshold", "fired_at", "workspace"]
    list_select_related = ["workspace", "budget"]
    search_fields = ["public_id", "workspace__slug", "budget__public_id"]
    date_hierarchy = "fired_at"
    actions = ["deliver_again"]

    @admin.display(description="Threshold", ordering="threshold")
    def threshold_percent(self, obj: SpendAlert) -> str:
        return f"{obj.threshold}%"

    @admin.display(description="Spent / limit", ordering="used_micro")
    def spent(self, obj: SpendAlert) -> str:
        return f"{usd(obj.used_micro)} / {usd(obj.limit_micro)}"

    @admin.display(description="Images / limit", ordering="used_images")
    def images(self, obj: SpendAlert) -> str:
        limit = "—" if obj.limit_images is None else str(obj.limit_images)
        return f"{obj.used_images} / {limit}"

    @admin.action(description="Deliver the selected alerts again (those that failed)")
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[SpendAlert]) -> None:
        actor = operator_actor(request.user.get_username())
        count = sum(alert_delivery.alert_redeliver(actor=actor, alert=a) for a in queryset)
        messages.info(request, f"{count} alert(s) queued for delivery again.")


@admin.register(UsageRecord)
class UsageRecordAdmin(_ReadOnly):
    list_display = [
        "created_at",
        "request_id",
        "workspace",
        "team",
        "key",
        "route",
        "provider",
        "upstream_model",
        "status",
        "error_code",
        "images",
        "cost",
        "provider_cost",
        "total_ms",
    ]
    list_filter = ["status", "endpoint", "provider", "workspace", "created_at"]
    list_select_related = ["workspace", "team", "key"]
    search_fields = ["request_id", "alias", "upstream_model", "key__public_id", "path"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over a big table on every page

    @admin.display(description="Charged", ordering="cost_micro")
    def cost(self, obj: UsageRecord) -> str:
        """What the tenant was charged: the provider's cost times the workspace's markup."""
        return usd(obj.cost_micro)

    @admin.display(description="Provider cost", ordering="provider_cost_micro")
    def provider_cost(self, obj: UsageRecord) -> str:
        return usd(obj.provider_cost_micro)

    @admin.display(description="Alias or path")
    def route(self, obj: UsageRecord) -> str:
        """The alias of an inference call; the native method and path of a passthrough call."""
        return obj.alias or (f"{obj.method} {obj.path}" if obj.path else "")


@admin.register(DailyUsage)
class DailyUsageAdmin(_ReadOnly):
    list_display = [
        "day",
        "workspace",
        "team",
        "key",
        "alias",
        "requests",
        "images",
        "errors",
        "cost",
        "p50_ms",
        "p95_ms",
    ]
    list_filter = ["day", "workspace"]
    list_select_related = ["workspace", "team", "key"]
    date_hierarchy = "day"

    @admin.display(description="Cost", ordering="cost_micro")
    def cost(self, obj: DailyUsage) -> str:
        return usd(obj.cost_micro)
