"""GET /v1/images/jobs/{id}/deliveries: the attempts at delivering a finished job to its
webhook (routing/jobs/webhooks.py), first first, for any `images` key of the job's workspace
(another workspace's job is a 404, as for the job itself)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.renderers import ORJSONRenderer
from routing.api.inference_schema import job_deliveries_schema
from routing.jobs.objects import job_of
from routing.models import JobDelivery
from tenants.permissions import ImagesScope, request_principal


class JobDeliveryOut(serializers.Serializer[Any]):
    """One attempt (documented as JobDeliveryDoc); `error` is empty once delivered."""

    attempt = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    delivered = serializers.BooleanField()
    duration_ms = serializers.IntegerField()
    created_at = serializers.SerializerMethodField()

    def get_created_at(self, delivery: JobDelivery) -> int:
        return int(delivery.created_at.timestamp())


class JobDeliveriesView(APIView):
    permission_classes = [ImagesScope]
    renderer_classes = [ORJSONRenderer]

    @job_deliveries_schema
    def get(self, request: Request, job_id: str) -> Response:
        job = job_of(request_principal(request), job_id)
        deliveries = JobDelivery.objects.filter(job=job).order_by("attempt")
        return Response({"object": "list", "data": JobDeliveryOut(deliveries, many=True).data})
