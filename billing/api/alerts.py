"""Spend alerts: `GET /api/v1/alerts`, newest first, for the budgets the key sees."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.openapi import paginated
from aperture.pagination import NewestFirst
from billing import selectors as billing_selectors
from billing.api.serializers import AlertFilterIn, SpendAlertOut
from tenants.permissions import ManageScope, request_principal


class NewestFiredFirst(NewestFirst):
    ordering = ("-fired_at", "-id")


class AlertListView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=["Budgets"],
        parameters=[AlertFilterIn],
        responses=paginated("PaginatedSpendAlerts", SpendAlertOut),
        operation_id="alerts_list",
        summary="Spend alerts: budgets that reached an alert threshold, newest first",
    )
    def get(self, request: Request) -> Response:
        f = validated(AlertFilterIn, request.query_params)
        alerts = billing_selectors.alerts_visible(request_principal(request), f.get("budget"))
        paginator = NewestFiredFirst()
        page = paginator.paginate_queryset(alerts, request, view=self)
        return paginator.get_paginated_response(SpendAlertOut(page, many=True).data)
