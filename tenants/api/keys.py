"""API keys: `/api/v1/keys`, `/api/v1/keys/{id}`, `…/rotate`, `…/revoke`.

A secret appears in exactly one response: the one that created or rotated it.
"""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.errors import InvalidRequest
from aperture.openapi import paginated
from aperture.pagination import NewestFirst
from tenants import selectors, services
from tenants.alias_names import unknown_alias_names
from tenants.api.serializers import (
    KeyCreateIn,
    KeyFilterIn,
    KeyOut,
    KeyRotateIn,
    KeyUpdateIn,
    KeyWithSecretOut,
)
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey
from tenants.permissions import ManageScope, request_principal

TAGS = ["Keys"]


def _key_out(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    if secret is None:
        return dict(KeyOut(key).data)
    key.secret = secret  # type: ignore[attr-defined]  # for this one response only
    return dict(KeyWithSecretOut(key).data)


def _check_aliases(principal: KeyPrincipal, names: list[str]) -> None:
    unknown = unknown_alias_names(principal.workspace_id, names)
    if unknown:
        raise InvalidRequest(
            f"Unknown aliases {unknown}: GET /api/v1/aliases lists those this workspace has.",
            param="allowed_aliases",
        )


class KeyListView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=TAGS,
        parameters=[KeyFilterIn],
        responses=paginated("PaginatedKeys", KeyOut),
        operation_id="keys_list",
        summary="List keys (a manage:team key sees its team's)",
    )
    def get(self, request: Request) -> Response:
        principal = request_principal(request)
        f = validated(KeyFilterIn, request.query_params)
        keys = selectors.keys_filtered(
            principal, team_id=f.get("team"), scope=f.get("scope"), status=f.get("status")
        )
        paginator = NewestFirst()
        page = paginator.paginate_queryset(keys.select_related("team"), request, view=self)
        return paginator.get_paginated_response([_key_out(k) for k in page or []])

    @extend_schema(
        tags=TAGS,
        request=KeyCreateIn,
        responses={201: KeyWithSecretOut},
        summary="Create a key: its secret is in this response only",
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        data = validated(KeyCreateIn, request.data)
        fields = dict(data)
        team_id = fields.pop("team", None)
        team = (
            selectors.team_get(principal, team_id, param="team")
            if team_id
            else selectors.own_team(principal)
        )
        _check_aliases(principal, fields["allowed_aliases"])
        created = services.key_issue(grantor=principal, team=team, **fields)
        return Response(_key_out(created.key, created.secret), status=201)


class KeyDetailView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(tags=TAGS, responses=KeyOut, summary="Retrieve a key (never its secret)")
    def get(self, request: Request, key_id: str) -> Response:
        return Response(_key_out(selectors.key_get(request_principal(request), key_id)))

    @extend_schema(
        tags=TAGS,
        request=KeyUpdateIn,
        responses=KeyOut,
        summary="Change a key's name, allowed aliases, rate limits (its own and per end "
        'user), webhook URL ("" clears) or expiry (null clears)',
    )
    def patch(self, request: Request, key_id: str) -> Response:
        principal = request_principal(request)
        key = selectors.key_get(principal, key_id)
        data = validated(KeyUpdateIn, request.data)
        if "allowed_aliases" in data:
            _check_aliases(principal, data["allowed_aliases"])
        key = services.key_edit(grantor=principal, key=key, fields=dict(data))
        return Response(_key_out(key))


class KeyRotateView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=TAGS,
        request=KeyRotateIn,
        responses=KeyWithSecretOut,
        summary="Rotate: a new secret now, the old one for the grace period",
    )
    def post(self, request: Request, key_id: str) -> Response:
        principal = request_principal(request)
        key = selectors.key_get(principal, key_id)
        data = validated(KeyRotateIn, request.data)
        rotated = services.key_rotate_by(
            grantor=principal, key=key, grace_seconds=data["grace_period_seconds"]
        )
        return Response(_key_out(rotated.key, rotated.secret))


class KeyRevokeView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=TAGS,
        request=None,
        responses=KeyOut,
        summary="Revoke: refused from the very next request on",
    )
    def post(self, request: Request, key_id: str) -> Response:
        principal = request_principal(request)
        key = services.key_revoke_by(grantor=principal, key=selectors.key_get(principal, key_id))
        return Response(_key_out(key))
