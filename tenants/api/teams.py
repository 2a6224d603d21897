"""The workspace and its teams: `GET /api/v1/workspace`, its webhook secret's rotation,
`/api/v1/teams[/{id}[/archive]]`."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.openapi import paginated
from aperture.pagination import OldestFirst
from tenants import selectors, services, webhook_secrets
from tenants.api.serializers import (
    TeamCreateIn,
    TeamOut,
    TeamUpdateIn,
    WebhookSecretOut,
    WorkspaceOut,
)
from tenants.permissions import (
    ManageScope,
    ManageWorkspaceForWrites,
    ManageWorkspaceScope,
    request_principal,
)

TAGS = ["Workspace and teams"]


class WorkspaceView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(tags=TAGS, responses=WorkspaceOut, summary="The caller's workspace")
    def get(self, request: Request) -> Response:
        workspace = selectors.workspace_of(request_principal(request))
        return Response(WorkspaceOut(workspace).data)


class WebhookSecretRotateView(APIView):
    permission_classes = [ManageWorkspaceScope]

    @extend_schema(
        tags=TAGS,
        request=None,
        responses=WebhookSecretOut,
        summary="A new webhook signing secret, shown once (manage:workspace)",
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        workspace = selectors.workspace_of(principal)
        secret = webhook_secrets.webhook_secret_rotate(
            actor=services.actor_for(principal), workspace=workspace
        )
        out = {"secret": secret, "rotated_at": workspace.webhook_secret_rotated_at}
        return Response(WebhookSecretOut(out).data)


class TeamListView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(
        tags=TAGS,
        responses=paginated("PaginatedTeams", TeamOut),
        operation_id="teams_list",
        summary="List teams (a manage:team key sees its own)",
    )
    def get(self, request: Request) -> Response:
        paginator = OldestFirst()
        teams = selectors.teams_visible(request_principal(request))
        page = paginator.paginate_queryset(teams, request, view=self)
        return paginator.get_paginated_response(TeamOut(page, many=True).data)

    @extend_schema(
        tags=TAGS, request=TeamCreateIn, responses={201: TeamOut}, summary="Create a team"
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        data = validated(TeamCreateIn, request.data)
        team = services.team_create(
            actor=services.actor_for(principal),
            workspace=selectors.workspace_of(principal),
            **data,
        )
        return Response(TeamOut(team).data, status=201)


class TeamDetailView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(tags=TAGS, responses=TeamOut, summary="Retrieve a team")
    def get(self, request: Request, team_id: str) -> Response:
        team = selectors.team_get(request_principal(request), team_id)
        return Response(TeamOut(team).data)

    @extend_schema(tags=TAGS, request=TeamUpdateIn, responses=TeamOut, summary="Rename a team")
    def patch(self, request: Request, team_id: str) -> Response:
        principal = request_principal(request)
        team = selectors.team_get(principal, team_id)
        data = validated(TeamUpdateIn, request.data)
        team = services.team_rename(
            actor=services.actor_for(principal), team=team, name=data["name"]
        )
        return Response(TeamOut(team).data)


class TeamArchiveView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(
        tags=TAGS,
        request=None,
        responses=TeamOut,
        summary="Archive a team: its keys are refused from the next request on",
    )
    def post(self, request: Request, team_id: str) -> Response:
        principal = request_principal(request)
        team = selectors.team_get(principal, team_id)
        team = services.team_archive_by(grantor=principal, team=team)
        return Response(TeamOut(team).data)
