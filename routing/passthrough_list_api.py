"""`GET /v1/passthrough`: the native APIs the calling key may reach through passthrough, with
their prefix, paths, where the key goes, how image routes are charged and the operator's
notes."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.api.passthrough_serializers import PassthroughListOut
from routing.passthrough import discovery
from tenants.permissions import ImagesScope, request_principal


class PassthroughListView(APIView):
    permission_classes = [ImagesScope]

    @extend_schema(
        tags=["Passthrough"],
        responses=PassthroughListOut,
        operation_id="v1_passthrough_list",
        summary="The native APIs this key may call through passthrough",
    )
    def get(self, request: Request) -> Response:
        listing = discovery.listing_for_principal(request_principal(request))
        return Response(PassthroughListOut(listing).data)
