"""Guardrails: `/api/v1/guardrails[/{id}[/test]]`. A workspace reads its own policies and the
platform's; with `manage:workspace` it adds, changes and deletes its own, never the platform's
(a workspace may add rules, not remove or weaken an operator's)."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.db import release_connection
from aperture.errors import NotFound, PermissionError_
from aperture.openapi import listed
from routing import selectors
from routing.api.guardrail_serializers import (
    GuardrailCreateIn,
    GuardrailOut,
    GuardrailTestIn,
    GuardrailTestOut,
    GuardrailUpdateIn,
)
from routing.guardrails.check import try_policy
from routing.guardrails.services import guardrail_create, guardrail_delete, guardrail_update
from routing.models import GuardrailPolicy, ProviderCredential
from tenants.permissions import ManageWorkspaceForWrites, request_principal
from tenants.selectors import workspace_of
from tenants.services import actor_for

TAGS = ["Guardrails"]


def _own(policy: GuardrailPolicy) -> GuardrailPolicy:
    """`policy` if the workspace may change it: a platform policy is a 403."""
    if policy.workspace_id is None:
        raise PermissionError_(
            "A platform policy is set by the gateway's operators; a workspace may add its own "
            "policies, not change or remove the platform's.",
            code="platform_policy",
        )
    return policy


def _fields(workspace_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """The validated input as the services take it: a credential id becomes the workspace's
    own credential (another workspace's, or the platform's, is a 404)."""
    fields = dict(data)
    public_id = fields.get("credential")
    if public_id is not None:
        fields["credential"] = _own_credential(workspace_id, public_id)
    return fields


def _own_credential(workspace_id: int, public_id: str) -> ProviderCredential:
    try:
        return selectors.credential_of_workspace(workspace_id, public_id)
    except NotFound as error:
        raise NotFound(error.message, param="credential") from None


def _out(policy: GuardrailPolicy) -> dict[str, Any]:
    """A policy as its workspace sees it: a platform policy's lists and credential are the
    operator's and stay hidden; a credential is named only if it is the workspace's own."""
    own = policy.workspace_id is not None
    credential = policy.credential
    shown_credential = (
        credential.public_id
        if own and credential is not None and credential.workspace_id == policy.workspace_id
        else None
    )
    return dict(
        GuardrailOut(
            {
                "id": policy.public_id,
                "name": policy.name,
                "owner": "workspace" if own else "platform",
                "kind": policy.kind,
                "action": policy.action,
                "applies_to": policy.applies_to,
                "patterns": policy.patterns if own else None,
                "detectors": policy.detectors if own else None,
                "credential": shown_credential,
                "moderation_model": policy.moderation_model,
                "categories": policy.categories if own else None,
                "check_prompt": policy.check_prompt,
                "check_output": policy.check_output,
                "allow_partial": policy.allow_partial,
                "charge_withheld": policy.charge_withheld,
                "timeout_seconds": policy.timeout_seconds,
                # When a platform policy fails open is the operator's to know, not a caller's.
                "fail_open": policy.fail_open if own else None,
                "enabled": policy.enabled,
                "created_at": policy.created_at,
                "updated_at": policy.updated_at,
            }
        ).data
    )


class GuardrailListView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(
        tags=TAGS,
        responses=listed("GuardrailList", GuardrailOut),
        operation_id="guardrails_list",
        summary="The policies checked on this workspace's requests",
        description="The platform's enabled policies (`owner: platform`, read-only, applied to "
        "every workspace) and the workspace's own (`owner: workspace`, applied to its keys "
        "only). A platform policy shows its name, kind, action and routes, not its lists: "
        "`patterns`, `detectors`, `categories` and `credential` are null.",
    )
    def get(self, request: Request) -> Response:
        policies = selectors.guardrails_of_workspace(request_principal(request).workspace_id)
        return Response({"data": [_out(p) for p in policies]})

    @extend_schema(
        tags=TAGS,
        request=GuardrailCreateIn,
        responses={201: GuardrailOut},
        summary="Add a policy for this workspace's keys (manage:workspace)",
        description="Checked before any upstream call of the workspace's requests, after the "
        "platform's policies. A moderation policy calls OpenAI's moderation endpoint with one "
        "of the workspace's own OpenAI credentials.",
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        data = validated(GuardrailCreateIn, request.data)
        policy = guardrail_create(
            actor=actor_for(principal),
            workspace=workspace_of(principal),
            fields=_fields(principal.workspace_id, data),
        )
        return Response(_out(policy), status=201)


class GuardrailDetailView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(tags=TAGS, responses=GuardrailOut, summary="Retrieve a policy")
    def get(self, request: Request, guardrail_id: str) -> Response:
        policy = selectors.guardrail_of_workspace(
            request_principal(request).workspace_id, guardrail_id
        )
        return Response(_out(policy))

    @extend_schema(
        tags=TAGS,
        request=GuardrailUpdateIn,
        responses=GuardrailOut,
        summary="Change a workspace policy (a platform policy is a 403, platform_policy)",
    )
    def patch(self, request: Request, guardrail_id: str) -> Response:
        principal = request_principal(request)
        policy = _own(selectors.guardrail_of_workspace(principal.workspace_id, guardrail_id))
        data = validated(GuardrailUpdateIn, request.data)
        policy = guardrail_update(
            actor=actor_for(principal),
            policy=policy,
            fields=_fields(principal.workspace_id, data),
        )
        return Response(_out(policy))

    @extend_schema(
        tags=TAGS,
        responses={204: None},
        summary="Delete a workspace policy (a platform policy is a 403, platform_policy)",
    )
    def delete(self, request: Request, guardrail_id: str) -> Response:
        principal = request_principal(request)
        policy = _own(selectors.guardrail_of_workspace(principal.workspace_id, guardrail_id))
        guardrail_delete(actor=actor_for(principal), policy=policy)
        return Response(status=204)


class GuardrailTestView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(
        tags=TAGS,
        request=GuardrailTestIn,
        responses=GuardrailTestOut,
        summary="What a workspace policy, as saved, would do with a prompt",
        description="Nothing is generated or charged; a moderation policy calls the moderation "
        "endpoint with its credential. Platform policies cannot be tried (403 platform_policy): "
        "their lists are the operator's.",
    )
    def post(self, request: Request, guardrail_id: str) -> Response:
        principal = request_principal(request)
        policy = _own(selectors.guardrail_of_workspace(principal.workspace_id, guardrail_id))
        data = validated(GuardrailTestIn, request.data)
        if policy.kind == GuardrailPolicy.Kind.MODERATION:
            release_connection()
        trial = try_policy(policy, data["prompt"])
        return Response(GuardrailTestOut(trial).data)
