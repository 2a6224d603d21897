"""/v1/images/jobs: the async jobs a key submitted (`Prefer: respond-async` on an image
POST), one job, and cancelling one. A job is its workspace's: another's id is a 404."""

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.errors import InvalidRequest
from aperture.pagination import NewestFirst
from aperture.renderers import ORJSONRenderer
from routing.api.inference_schema import (
    job_cancel_schema,
    job_detail_schema,
    job_list_schema,
)
from routing.jobs import run
from routing.jobs.objects import job_object, job_of
from routing.models import ImageJob
from tenants.permissions import ImagesScope, request_principal


class _JobPages(NewestFirst):
    page_size = 20
    max_page_size = 100


class JobListView(APIView):
    permission_classes = [ImagesScope]
    renderer_classes = [ORJSONRenderer]

    @job_list_schema
    def get(self, request: Request) -> Response:
        principal = request_principal(request)
        jobs = ImageJob.objects.filter(key_id=principal.key_id)
        status = request.query_params.get("status")
        if status is not None:
            if status not in ImageJob.Status.values:
                raise InvalidRequest(
                    f"'status' must be one of {', '.join(ImageJob.Status.values)}.",
                    param="status",
                )
            jobs = jobs.filter(status=status)
        pages = _JobPages()
        page = pages.paginate_queryset(jobs, request, view=self) or []
        following = pages.get_next_link()
        return Response(
            {
                "object": "list",
                "data": [job_object(job, with_result=False) for job in page],
                "has_more": following is not None,
                "next": following,
            }
        )


class JobDetailView(APIView):
    permission_classes = [ImagesScope]
    renderer_classes = [ORJSONRenderer]

    @job_detail_schema
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_object(job_of(request_principal(request), job_id)))


class JobCancelView(APIView):
    permission_classes = [ImagesScope]
    renderer_classes = [ORJSONRenderer]

    @job_cancel_schema
    def post(self, request: Request, job_id: str) -> Response:
        job = job_of(request_principal(request), job_id)
        stopping = run.job_cancel(job)
        return Response(job_object(job), status=202 if stopping else 200)
