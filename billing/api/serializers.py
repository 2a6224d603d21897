"""Input and output shapes of the usage, budget and spend-alert routes."""

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from aperture.api_fields import StrictSerializer, UsdField, usd
from billing import alerts
from billing.models import Budget, SpendAlert, UsageRecord
from billing.selectors import BudgetStatus
from billing.usage_reports import GROUPS, METADATA_KEY, METADATA_PREFIX, SummaryRow


@extend_schema_field(OpenApiTypes.STR)
class DateOrDateTimeField(serializers.Field[Any, Any, Any, Any]):
    """`2026-12-01` (a whole UTC day) or an ISO 8601 date-time."""

    def __init__(self, *, end_of_day: bool = False, **kwargs: Any) -> None:
        self.end_of_day = end_of_day
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> datetime:
        text = str(data).strip()
        if "T" in text:
            text = text.replace(" ", "+")  # an unencoded "+01:00" arrives as " 01:00"
        moment = parse_datetime(text) if "T" in text else None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        day = parse_date(text) if moment is None else None
        if not isinstance(day, date):
            raise serializers.ValidationError(
                "Expected a date (2026-12-01) or an ISO 8601 date-time."
            )
        midnight = datetime.combine(day, time.min, tzinfo=UTC)
        return midnight + timedelta(days=1) if self.end_of_day else midnight

    def to_representation(self, value: Any) -> str:
        return str(value)


_METADATA_VALUE = serializers.CharField(max_length=512, allow_blank=True)


class UsageFilterIn(StrictSerializer):
    start = DateOrDateTimeField(required=False, help_text="From (a date: that day, inclusive).")
    end = DateOrDateTimeField(
        required=False,
        end_of_day=True,
        help_text="Until (a date: to the end of that day; a date-time: exclusive).",
    )
    team = serializers.CharField(required=False, max_length=32, help_text="Team id.")
    key = serializers.CharField(required=False, max_length=32, help_text="Key id.")
    alias = serializers.CharField(required=False, max_length=128)
    status = serializers.RegexField(
        r"^(success|error|[1-5][0-9][0-9])$",
        required=False,
        help_text="An HTTP status (402), `success` (< 400) or `error` (>= 400).",
    )
    user = serializers.CharField(
        required=False, max_length=256, help_text="The end user: the requests' `user`."
    )
    format = serializers.ChoiceField(
        choices=["json", "csv"], default="json", help_text="csv: the same data as a CSV file."
    )

    def to_internal_value(self, data: Any) -> Any:
        """`metadata.<key>=<value>` parameters, whatever their keys, become `metadata`: the
        records whose metadata has every one of those values."""
        rest, metadata = data.copy(), []
        for name in [name for name in rest if name.startswith(METADATA_PREFIX)]:
            key, value = name.removeprefix(METADATA_PREFIX), rest.pop(name)
            value = value[-1] if isinstance(value, list) else value  # a QueryDict's values
            if not METADATA_KEY.fullmatch(key):
                raise serializers.ValidationError(
                    {name: ["Metadata keys are 1-64 letters, digits, '_', '.', ':' or '-'."]}
                )
            try:
                metadata.append((key, _METADATA_VALUE.run_validation(value)))
            except serializers.ValidationError as error:
                raise serializers.ValidationError({name: error.detail}) from None
        attrs = super().to_internal_value(rest)
        attrs["metadata"] = tuple(sorted(metadata))
        return attrs

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "start" in attrs and "end" in attrs and attrs["start"] >= attrs["end"]:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        return attrs


class UsageRecordFilterIn(UsageFilterIn):
    cursor = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500)


class UsageSummaryFilterIn(UsageFilterIn):
    group_by = serializers.RegexField(
        rf"^({'|'.join(GROUPS)}|{re.escape(METADATA_PREFIX)}{METADATA_KEY.pattern})$",
        default="day",
        help_text=f"One of {', '.join(GROUPS)}, or metadata.<key> (by that key's value).",
    )


class UsageRecordOut(serializers.Serializer[Any]):
    request_id = serializers.CharField(help_text="The gateway's id: the x-request-id it sent.")
    client_request_id = serializers.CharField(
        help_text="The caller's own x-client-request-id or x-request-id; empty if none."
    )
    created_at = serializers.DateTimeField()
    team = serializers.CharField(source="team.public_id")
    key = serializers.CharField(source="key.public_id")
    alias = serializers.CharField()
    provider = serializers.CharField()
    upstream_model = serializers.CharField()
    endpoint = serializers.CharField()
    method = serializers.CharField()
    path = serializers.CharField()
    status = serializers.IntegerField()
    error_code = serializers.CharField()
    images = serializers.IntegerField()
    size = serializers.CharField()
    quality = serializers.CharField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_micro = serializers.IntegerField()
    cost_usd = serializers.SerializerMethodField()
    total_ms = serializers.IntegerField()
    upstream_ms = serializers.IntegerField()
    bytes_in = serializers.IntegerField()
    bytes_out = serializers.IntegerField()
    user = serializers.CharField(source="end_user", help_text="The request's `user`; or empty.")
    metadata = serializers.DictField(
        child=serializers.CharField(), help_text="The request's `metadata`."
    )

    def get_cost_usd(self, record: UsageRecord) -> str:
        return usd(record.cost_micro)


class SummaryRowOut(serializers.Serializer[Any]):
    group = serializers.CharField(
        help_text="The day, alias, key id, team id, end user, or metadata value (empty: none)."
    )
    label = serializers.CharField(  # type: ignore[assignment]
        help_text="The key's name or team's slug; else the group."
    )
    requests = serializers.IntegerField()
    images = serializers.IntegerField()
    errors = serializers.IntegerField(  # type: ignore[assignment]
        help_text="Requests answered with a status of 400 or more."
    )
    cost_micro = serializers.IntegerField()
    cost_usd = serializers.SerializerMethodField()

    def get_cost_usd(self, row: SummaryRow) -> str:
        return usd(row.cost_micro)


SUMMARY_COLUMNS = list(SummaryRowOut().fields)


class TotalsOut(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    images = serializers.IntegerField()
    errors = serializers.IntegerField()  # type: ignore[assignment]
    cost_micro = serializers.IntegerField()
    cost_usd = serializers.CharField()


class BudgetOut(serializers.Serializer[Any]):
    id = serializers.CharField(source="budget.public_id")
    scope = serializers.ChoiceField(choices=Budget.Scope.choices, source="budget.scope")
    team = serializers.SerializerMethodField()
    key = serializers.SerializerMethodField()
    period = serializers.ChoiceField(choices=Budget.Period.choices, source="budget.period")
    limit_micro = serializers.IntegerField(source="budget.limit_micro", allow_null=True)
    limit_usd = serializers.SerializerMethodField()
    limit_images = serializers.IntegerField(source="budget.limit_images", allow_null=True)
    period_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(allow_null=True)
    spent_micro = serializers.IntegerField()
    spent_usd = serializers.SerializerMethodField()
    reserved_micro = serializers.IntegerField(
        help_text="Held by requests in flight, and by gateway processes' slices of a busy budget "
        "(given back when idle or when the budget runs low)."
    )
    remaining_micro = serializers.IntegerField(allow_null=True)
    remaining_usd = serializers.SerializerMethodField()
    spent_images = serializers.IntegerField()
    reserved_images = serializers.IntegerField()
    remaining_images = serializers.IntegerField(allow_null=True)
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(),
        source="budget.alert_thresholds",
        help_text="Percentages of the limit at which a spend alert fires, once per period.",
    )
    alert_webhook_url = serializers.CharField(
        source="budget.alert_webhook_url",
        help_text="Empty: no webhook. Without `manage:workspace`: its scheme and host only.",
    )
    alert_emails = serializers.ListField(
        child=serializers.CharField(),
        source="budget.alert_emails",
        help_text="Without `manage:workspace`: each address's domain only.",
    )

    def to_representation(self, instance: BudgetStatus) -> dict[str, Any]:
        """Alert settings whole only for a reader that may change them (context
        `alert_settings`): the webhook's URL often carries the receiver's token."""
        data: dict[str, Any] = super().to_representation(instance)
        if not self.context.get("alert_settings", False):
            data["alert_webhook_url"] = alerts.masked_webhook_url(data["alert_webhook_url"])
            data["alert_emails"] = alerts.masked_emails(data["alert_emails"])
        return data

    def get_team(self, status: BudgetStatus) -> str | None:
        budget = status.budget
        return budget.team.public_id if budget.scope == "team" and budget.team else None

    def get_key(self, status: BudgetStatus) -> str | None:
        return status.budget.key.public_id if status.budget.key else None

    def get_limit_usd(self, status: BudgetStatus) -> str | None:
        return usd(status.budget.limit_micro)

    def get_spent_usd(self, status: BudgetStatus) -> str:
        return usd(status.spent_micro)

    def get_remaining_usd(self, status: BudgetStatus) -> str | None:
        return usd(status.remaining_micro)


class _AlertSettingsIn(StrictSerializer):
    """The alert settings a budget takes on creation and change (billing/alerts.py also
    checks the webhook URL's host and that the workspace has a webhook secret)."""

    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        max_length=10,
        required=False,
        help_text="Percentages of the limit (1 to 100, at most 10); each fires once per "
        "period. Default [50, 80, 100]; [] for none.",
    )
    alert_webhook_url = serializers.URLField(
        max_length=500,
        allow_blank=True,
        required=False,
        help_text="An https URL that receives each alert, signed with the workspace's "
        "webhook secret (Standard Webhooks); empty for none.",
    )
    alert_emails = serializers.ListField(
        child=serializers.EmailField(max_length=254),
        max_length=5,
        required=False,
        help_text="Up to 5 addresses each alert is emailed to.",
    )

    def validate_alert_thresholds(self, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("A threshold appears twice.")
        return value


class BudgetCreateIn(_AlertSettingsIn):
    team = serializers.CharField(required=False, max_length=32, help_text="A team id…")
    key = serializers.CharField(required=False, max_length=32, help_text="…or a key id.")
    period = serializers.ChoiceField(choices=Budget.Period.choices, default="month")
    limit_usd = UsdField(required=False, allow_null=True, default=None)
    limit_images = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("team" in attrs) == ("key" in attrs):
            raise serializers.ValidationError(
                {
                    "team": [
                        "Give exactly one of team or key (workspace budgets are set by operators)."
                    ]
                }
            )
        return attrs


class BudgetUpdateIn(_AlertSettingsIn):
    limit_usd = UsdField(required=False, allow_null=True)
    limit_images = serializers.IntegerField(required=False, allow_null=True, min_value=0)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Nothing to change.")
        return attrs


class AlertFilterIn(StrictSerializer):
    budget = serializers.CharField(required=False, max_length=32, help_text="A budget id.")
    cursor = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500)


class AlertBudgetOut(serializers.Serializer[Any]):
    id = serializers.CharField(source="public_id")
    scope = serializers.ChoiceField(choices=Budget.Scope.choices)
    period = serializers.ChoiceField(choices=Budget.Period.choices)
    team = serializers.SerializerMethodField()
    key = serializers.SerializerMethodField()

    def get_team(self, budget: Budget) -> str | None:
        return budget.team.public_id if budget.scope == "team" and budget.team else None

    def get_key(self, budget: Budget) -> str | None:
        return budget.key.public_id if budget.key else None


class SpendAlertOut(serializers.Serializer[Any]):
    id = serializers.CharField(source="public_id")
    budget = AlertBudgetOut()
    threshold = serializers.IntegerField(help_text="Percent of the limit that was reached.")
    period_start = serializers.DateTimeField()
    fired_at = serializers.DateTimeField()
    spent_micro = serializers.IntegerField(source="used_micro", help_text="When it fired.")
    spent_usd = serializers.SerializerMethodField()
    spent_images = serializers.IntegerField(source="used_images")
    limit_micro = serializers.IntegerField(allow_null=True)
    limit_usd = serializers.SerializerMethodField()
    limit_images = serializers.IntegerField(allow_null=True)
    webhook_status = serializers.ChoiceField(choices=SpendAlert.Delivery.choices)
    webhook_attempts = serializers.IntegerField()
    webhook_last_error = serializers.CharField()
    email_status = serializers.ChoiceField(choices=SpendAlert.Delivery.choices)

    def get_spent_usd(self, alert: SpendAlert) -> str:
        return usd(alert.used_micro)

    def get_limit_usd(self, alert: SpendAlert) -> str | None:
        return usd(alert.limit_micro)
