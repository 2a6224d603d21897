"""GET /v1/models and /v1/models/{id}: the aliases a key may use, in OpenAI's list format."""

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing import selectors
from routing.models import ModelAlias
from tenants.permissions import ImagesScope, request_principal


def model_object(alias: ModelAlias) -> dict[str, Any]:
    return {
        "id": alias.name,
        "object": "model",
        "created": int(alias.created_at.timestamp()),
        "owned_by": "workspace" if alias.workspace_id else "aperture",
    }


class ModelListView(APIView):
    permission_classes = [ImagesScope]

    def get(self, request: Request) -> Response:
        principal = request_principal(request)
        data = [model_object(alias) for alias in selectors.aliases_visible(principal)]
        return Response({"object": "list", "data": data})


class ModelDetailView(APIView):
    permission_classes = [ImagesScope]

    def get(self, request: Request, model: str) -> Response:
        principal = request_principal(request)
        return Response(model_object(selectors.alias_resolve(principal, model)))
