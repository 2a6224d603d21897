"""BYOK credentials (`manage:workspace`): `/api/v1/credentials[/{id}[/rotate|/test]]`.

Secrets go in and never come out: every response shows them masked.
"""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.db import release_connection
from aperture.openapi import paginated
from aperture.pagination import OldestFirst
from routing import selectors, services
from routing.api.serializers import (
    CredentialCheckOut,
    CredentialCreateIn,
    CredentialOut,
    CredentialRotateIn,
)
from routing.credential_check import check_credential
from routing.workspace_credentials import (
    workspace_credential_create,
    workspace_credential_delete,
)
from tenants.permissions import ManageWorkspaceScope, request_principal
from tenants.selectors import workspace_of
from tenants.services import actor_for

TAGS = ["Credentials (BYOK)"]


class CredentialListView(APIView):
    permission_classes = [ManageWorkspaceScope]

    @extend_schema(
        tags=TAGS,
        responses=paginated("PaginatedCredentials", CredentialOut),
        operation_id="credentials_list",
        summary="The workspace's credentials",
    )
    def get(self, request: Request) -> Response:
        credentials = selectors.credentials_of_workspace(request_principal(request).workspace_id)
        paginator = OldestFirst()
        page = paginator.paginate_queryset(credentials, request, view=self)
        return paginator.get_paginated_response(CredentialOut(page, many=True).data)

    @extend_schema(
        tags=TAGS,
        request=CredentialCreateIn,
        responses={201: CredentialOut},
        summary="Add a provider credential of the workspace's own",
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        data = validated(CredentialCreateIn, request.data)
        credential = workspace_credential_create(
            actor=actor_for(principal),
            workspace=workspace_of(principal),
            **data,
        )
        return Response(CredentialOut(credential).data, status=201)


class CredentialDetailView(APIView):
    permission_classes = [ManageWorkspaceScope]

    @extend_schema(tags=TAGS, responses=CredentialOut, summary="Retrieve a credential (masked)")
    def get(self, request: Request, credential_id: str) -> Response:
        principal = request_principal(request)
        credential = selectors.credential_of_workspace(principal.workspace_id, credential_id)
        return Response(CredentialOut(credential).data)

    @extend_schema(tags=TAGS, responses={204: None}, summary="Delete a credential no alias uses")
    def delete(self, request: Request, credential_id: str) -> Response:
        principal = request_principal(request)
        credential = selectors.credential_of_workspace(principal.workspace_id, credential_id)
        workspace_credential_delete(actor=actor_for(principal), credential=credential)
        return Response(status=204)


class CredentialRotateView(APIView):
    permission_classes = [ManageWorkspaceScope]

    @extend_schema(
        tags=TAGS,
        request=CredentialRotateIn,
        responses=CredentialOut,
        summary="Replace the secret (effective on the next request)",
    )
    def post(self, request: Request, credential_id: str) -> Response:
        principal = request_principal(request)
        credential = selectors.credential_of_workspace(principal.workspace_id, credential_id)
        data = validated(CredentialRotateIn, request.data)
        credential = services.credential_rotate_secret(
            actor=actor_for(principal), credential=credential, secret=data["secret"]
        )
        return Response(CredentialOut(credential).data)


class CredentialTestView(APIView):
    permission_classes = [ManageWorkspaceScope]

    @extend_schema(
        tags=TAGS,
        request=None,
        responses=CredentialCheckOut,
        summary="One free call to the provider: does it accept this credential?",
    )
    def post(self, request: Request, credential_id: str) -> Response:
        principal = request_principal(request)
        credential = selectors.credential_of_workspace(principal.workspace_id, credential_id)
        release_connection()
        result = check_credential(credential)
        return Response(CredentialCheckOut(result).data)
