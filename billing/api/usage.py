"""Usage: `GET /api/v1/usage` (records) and `GET /api/v1/usage/summary` (aggregates).

Both take the same filters, and `format=csv` for the same data as a CSV file: the
records' CSV is every matching record (streamed, not paginated), the summary's its rows;
both through aperture/csv_export.py, which writes formula-like text cells as text.
"""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import usd, validated
from aperture.csv_export import csv_response
from aperture.openapi import paginated
from aperture.pagination import NewestFirst
from billing import selectors as billing_selectors
from billing.api.serializers import (
    SUMMARY_COLUMNS,
    BudgetOut,
    SummaryRowOut,
    TotalsOut,
    UsageRecordFilterIn,
    UsageRecordOut,
    UsageSummaryFilterIn,
)
from billing.usage_reports import (
    RECORD_COLUMNS,
    UsageQuery,
    record_rows,
    totals,
    usage_records,
    usage_summary,
)
from tenants import selectors
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey
from tenants.permissions import ManageScope, request_principal

TAGS = ["Usage"]
ATTRIBUTION = (
    "Filter by end user with `user=<id>` and by the requests' metadata with any number of "
    "`metadata.<key>=<value>` parameters (all must match)."
)


def usage_query(principal: KeyPrincipal, f: dict[str, Any]) -> UsageQuery:
    """The filters as a query, within what the key may see (foreign ids are a 404)."""
    team_id = selectors.team_scope(principal)
    if "team" in f:
        team_id = selectors.team_get(principal, f["team"], param="team").pk
    key_id = selectors.key_get(principal, f["key"], param="key").pk if "key" in f else None
    return UsageQuery(
        workspace_id=principal.workspace_id,
        team_id=team_id,
        key_id=key_id,
        alias=f.get("alias"),
        status=f.get("status"),
        start=f.get("start"),
        end=f.get("end"),
        end_user=f.get("user"),
        metadata=f["metadata"],
    )


_CSV = {(200, "text/csv"): OpenApiTypes.STR}


class UsageRecordListView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=TAGS,
        parameters=[UsageRecordFilterIn],
        responses={
            (200, "application/json"): paginated("PaginatedUsageRecords", UsageRecordOut),
            **_CSV,
        },
        operation_id="usage_list",
        summary="Usage records, newest first",
        description=ATTRIBUTION,
    )
    def get(self, request: Request) -> Any:
        f = validated(UsageRecordFilterIn, request.query_params)
        query = usage_query(request_principal(request), f)
        records = usage_records(query).select_related("team", "key")
        if f["format"] == "csv":
            return csv_response("usage.csv", list(RECORD_COLUMNS), record_rows(query))
        paginator = NewestFirst()
        page = paginator.paginate_queryset(records, request, view=self)
        return paginator.get_paginated_response(UsageRecordOut(page, many=True).data)


class UsageSummaryView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=TAGS,
        parameters=[UsageSummaryFilterIn],
        responses={
            (200, "application/json"): inline_serializer(
                "UsageSummary",
                {
                    "group_by": serializers.CharField(),
                    "data": SummaryRowOut(many=True),
                    "total": TotalsOut(),
                    "budgets": BudgetOut(many=True),
                },
            ),
            **_CSV,
        },
        summary="Requests, images, errors and cost by day, alias, key, team, end user or "
        "metadata key; budgets",
        description=f"{ATTRIBUTION} `group_by=user` groups by end user, "
        "`group_by=metadata.<key>` by that key's value.",
    )
    def get(self, request: Request) -> Any:
        f = validated(UsageSummaryFilterIn, request.query_params)
        principal = request_principal(request)
        group_by = f["group_by"]
        rows = usage_summary(usage_query(principal, f), group_by)
        data = SummaryRowOut(rows, many=True).data
        if f["format"] == "csv":
            return csv_response(
                f"usage-by-{group_by}.csv",
                SUMMARY_COLUMNS,
                ([row[c] for c in SUMMARY_COLUMNS] for row in data),
            )
        total = totals(rows)
        budgets = [
            billing_selectors.budget_status(b) for b in billing_selectors.budgets_visible(principal)
        ]
        return Response(
            {
                "group_by": group_by,
                "data": data,
                "total": {**total, "cost_usd": usd(total["cost_micro"])},
                "budgets": BudgetOut(
                    budgets,
                    many=True,
                    # Alert settings whole only for a key that may change them (budgets.py).
                    context={"alert_settings": principal.has_scope(ApiKey.Scope.MANAGE_WORKSPACE)},
                ).data,
            }
        )
