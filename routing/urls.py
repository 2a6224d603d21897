"""Inference routes: the OpenAI-compatible API and the Azure-style deployments route."""

from django.urls import path

from routing import images_api, models_api, passthrough_list_api

urlpatterns = [
    path("v1/models", models_api.ModelListView.as_view(), name="models-list"),
    path("v1/models/<path:model>", models_api.ModelDetailView.as_view(), name="models-detail"),
    path(
        "v1/passthrough",
        passthrough_list_api.PassthroughListView.as_view(),
        name="passthrough-list",
    ),
    path(
        "v1/images/generations",
        images_api.ImageGenerationView.as_view(),
        name="images-generations",
    ),
    path("v1/images/edits", images_api.ImageEditView.as_view(), name="images-edits"),
    path("v1/images/files/<str:token>", images_api.hosted_image, name="hosted-image"),
    path(
        "openai/deployments/<str:alias>/images/generations",
        images_api.AzureImageGenerationView.as_view(),
        name="azure-images-generations",
    ),
    path(
        "openai/deployments/<str:alias>/images/edits",
        images_api.AzureImageEditView.as_view(),
        name="azure-images-edits",
    ),
]
