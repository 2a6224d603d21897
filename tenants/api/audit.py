"""`GET /api/v1/audit-events`: who changed what in this workspace, newest first."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.openapi import paginated
from aperture.pagination import NewestFirst
from tenants import selectors
from tenants.api.serializers import AuditEventOut, AuditFilterIn
from tenants.permissions import ManageWorkspaceScope, request_principal


class AuditEventListView(APIView):
    permission_classes = [ManageWorkspaceScope]

    @extend_schema(
        tags=["Audit"],
        parameters=[AuditFilterIn],
        responses=paginated("PaginatedAuditEvents", AuditEventOut),
        operation_id="audit_events_list",
        summary="The workspace's audit trail (manage:workspace)",
    )
    def get(self, request: Request) -> Response:
        f = validated(AuditFilterIn, request.query_params)
        events = selectors.audit_events(
            request_principal(request),
            event=f.get("event"),
            actor=f.get("actor"),
            target_id=f.get("target_id"),
            since=f.get("since"),
            until=f.get("until"),
        )
        paginator = NewestFirst()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOut(page, many=True).data)
