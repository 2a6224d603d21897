"""Inference routes: the OpenAI-compatible API and the Azure-style deployments route."""

from django.urls import path

from routing import models_api

urlpatterns = [
    path("v1/models", models_api.ModelListView.as_view(), name="models-list"),
    path("v1/models/<path:model>", models_api.ModelDetailView.as_view(), name="models-detail"),
]
