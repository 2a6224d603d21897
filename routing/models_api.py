"""GET /v1/models and /v1/models/{id}: the aliases a key may use, in OpenAI's list format.

Each model carries an `aperture` object with what it can do (from its first deployment's
capability table), so clients can discover sizes, formats and limits, and whether it is
`available`: false when it has no usable deployment, or when every deployment's circuit is
open (routing/health.py; one read of the shared health state for the whole list).
"""

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing import health_report, selectors
from routing.api.inference_schema import model_detail_schema, model_list_schema
from routing.models import Deployment, ModelAlias
from routing.providers.registry import ADAPTERS
from tenants.permissions import ImagesScope, request_principal


def model_object(
    alias: ModelAlias, deployment: Deployment | None, *, all_open: bool = False
) -> dict[str, Any]:
    """`deployment`: the alias's first usable one; `all_open`: every one's circuit is open."""
    aperture: dict[str, Any] = {"available": False}
    if deployment is not None and deployment.credential.provider in ADAPTERS:
        adapter = ADAPTERS[deployment.credential.provider]
        aperture = {
            "available": not all_open,
            "provider": deployment.credential.provider,
            "capabilities": adapter.capabilities(
                deployment.upstream_model,
                {**(deployment.credential.options or {}), **(deployment.options or {})},
            ).describe(),
        }
    if alias.description:
        aperture["description"] = alias.description
    return {
        "id": alias.name,
        "object": "model",
        "created": int(alias.created_at.timestamp()),
        "owned_by": "workspace" if alias.workspace_id else "aperture",
        "aperture": aperture,
    }


def _described(
    alias: ModelAlias, usable: dict[int, list[Deployment]], cooling: set[int]
) -> dict[str, Any]:
    first = next(iter(usable.get(alias.pk, [])), None)
    return model_object(alias, first, all_open=alias.pk in cooling)


class ModelListView(APIView):
    permission_classes = [ImagesScope]

    @model_list_schema
    def get(self, request: Request) -> Response:
        aliases = selectors.aliases_visible(request_principal(request))
        usable = selectors.usable_deployments([alias.pk for alias in aliases])
        cooling = health_report.all_open(usable)
        data = [_described(alias, usable, cooling) for alias in aliases]
        return Response({"object": "list", "data": data})


class ModelDetailView(APIView):
    permission_classes = [ImagesScope]

    @model_detail_schema
    def get(self, request: Request, model: str) -> Response:
        alias = selectors.alias_resolve(request_principal(request), model)
        usable = selectors.usable_deployments([alias.pk])
        return Response(_described(alias, usable, health_report.all_open(usable)))
