"""A test-only urlconf with a view that fails, to check the 500 envelope."""

from django.urls import include, path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class Explodes(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals must not leak")


urlpatterns = [
    path("v1/explode", Explodes.as_view()),
    path("", include("gateway.urls")),
]
