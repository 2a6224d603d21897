"""GET /v1/models and /v1/models/{id}: the aliases a key may use, in OpenAI's list format.

Each model carries an `aperture` object with what it can do (from its first deployment's
capability table), so clients can discover sizes, formats and limits.
"""

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing import selectors
from routing.api.inference_schema import model_detail_schema, model_list_schema
from routing.models import Deployment, ModelAlias
from routing.providers.registry import ADAPTERS
from tenants.permissions import ImagesScope, request_principal


def model_object(alias: ModelAlias, deployment: Deployment | None) -> dict[str, Any]:
    aperture: dict[str, Any] = {"available": False}
    if deployment is not None and deployment.credential.provider in ADAPTERS:
        adapter = ADAPTERS[deployment.credential.provider]
        aperture = {
            "available": True,
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


class ModelListView(APIView):
    permission_classes = [ImagesScope]

    @model_list_schema
    def get(self, request: Request) -> Response:
        aliases = selectors.aliases_visible(request_principal(request))
        first = selectors.first_deployments([alias.pk for alias in aliases])
        data = [model_object(alias, first.get(alias.pk)) for alias in aliases]
        return Response({"object": "list", "data": data})


class ModelDetailView(APIView):
    permission_classes = [ImagesScope]

    @model_detail_schema
    def get(self, request: Request, model: str) -> Response:
        alias = selectors.alias_resolve(request_principal(request), model)
        deployment = selectors.first_deployments([alias.pk]).get(alias.pk)
        return Response(model_object(alias, deployment))
