"""A test-only urlconf with views that fail, to check the 500 envelope and the 503 of a
database pool that ran dry, inside DRF's exception handler and past it (in a plain Django
view, or a step after DRF's handler: what handler500 answers)."""

from typing import Any

from django.db.utils import OperationalError
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from psycopg_pool import PoolTimeout
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class Explodes(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals must not leak")


def _pool_ran_dry() -> OperationalError:
    error = OperationalError("couldn't get a connection after 10.00 sec")
    error.__cause__ = PoolTimeout("couldn't get a connection after 10.00 sec")
    return error


class PoolDryWhenFinishing(APIView):
    """Fails past DRF's exception handler: in finalize_response, which runs after it."""

    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request: Request) -> Response:
        return Response({"ok": True})

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        raise _pool_ran_dry()


def pool_dry_plain(request: HttpRequest) -> HttpResponse:
    raise _pool_ran_dry()


def explodes_plain(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internals must not leak")


def database_fails_plain(request: HttpRequest) -> HttpResponse:
    raise OperationalError("server closed the connection unexpectedly")  # not a pool timeout


urlpatterns = [
    path("v1/explode", Explodes.as_view()),
    path("v1/pool-dry-finishing", PoolDryWhenFinishing.as_view()),
    path("v1/pool-dry-plain", pool_dry_plain),
    path("v1/explode-plain", explodes_plain),
    path("v1/database-fails-plain", database_fails_plain),
    path("", include("gateway.urls")),
]

handler500 = "aperture.errors.server_error_view"  # as gateway.urls names it
