"""Inference routes: the OpenAI-compatible API and the Azure-style deployments route."""

from django.urls import path

from routing import images_api, jobs_api, models_api, passthrough_list_api
from routing.jobs.deliveries_api import JobDeliveriesView

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
    path("v1/images/jobs", jobs_api.JobListView.as_view(), name="image-jobs"),
    path("v1/images/jobs/<str:job_id>", jobs_api.JobDetailView.as_view(), name="image-job"),
    path(
        "v1/images/jobs/<str:job_id>/cancel",
        jobs_api.JobCancelView.as_view(),
        name="image-job-cancel",
    ),
    path(
        "v1/images/jobs/<str:job_id>/deliveries",
        JobDeliveriesView.as_view(),
        name="image-job-deliveries",
    ),
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
