"""`GET /api/v1/passthrough`: what a key of the workspace may call through passthrough.

Any management key; `?key=` names one key of the workspace (a `manage:team` key: of its own
team), else the list is what any key not limited to some models may call.
"""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from routing.api.passthrough_serializers import PassthroughFilterIn, PassthroughListOut
from routing.passthrough import discovery
from tenants import selectors
from tenants.permissions import ManageScope, request_principal

TAGS = ["Passthrough"]


class PassthroughListView(APIView):
    permission_classes = [ManageScope]

    @extend_schema(
        tags=TAGS,
        parameters=[PassthroughFilterIn],
        responses=PassthroughListOut,
        operation_id="passthrough_list",
        summary="The native APIs a key may call through passthrough",
    )
    def get(self, request: Request) -> Response:
        principal = request_principal(request)
        f = validated(PassthroughFilterIn, request.query_params)
        if "key" in f:
            key = selectors.key_get(principal, f["key"], param="key")
            listing = discovery.listing_for_key(key)
        else:
            listing = discovery.listing_for_workspace(principal.workspace_id)
        return Response(PassthroughListOut(listing).data)
