"""OpenAPI descriptions of the inference routes, which read their bodies themselves.

These serializers only document (the views validate against each model's capabilities);
the test suite checks real responses against them.
"""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers

IMAGE_TAGS = ["Images (OpenAI-compatible)"]


class ImageGenerationDoc(serializers.Serializer[Any]):
    model = serializers.CharField(help_text="An alias (GET /v1/models).")
    prompt = serializers.CharField()
    n = serializers.IntegerField(required=False, min_value=1)
    size = serializers.CharField(required=False, help_text="WxH, 512/1K/2K/4K or auto.")
    quality = serializers.CharField(required=False)
    style = serializers.CharField(required=False)  # type: ignore[assignment]
    background = serializers.CharField(required=False)
    output_format = serializers.ChoiceField(choices=["png", "jpeg", "webp"], required=False)
    output_compression = serializers.IntegerField(required=False, min_value=0, max_value=100)
    moderation = serializers.CharField(required=False)
    response_format = serializers.ChoiceField(choices=["b64_json", "url"], required=False)
    user = serializers.CharField(required=False)
    seed = serializers.IntegerField(required=False, min_value=0)
    stream = serializers.BooleanField(required=False)
    partial_images = serializers.IntegerField(required=False, min_value=0, max_value=3)
    resolution = serializers.ChoiceField(choices=["512", "1K", "2K", "4K"], required=False)
    aspect_ratio = serializers.CharField(required=False, help_text="e.g. 16:9")
    input_references = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Data URLs or http(s) URLs."
    )
    provider = serializers.DictField(required=False, help_text="Per-provider options.")
    allow_partial = serializers.BooleanField(required=False)
    webhook_url = serializers.URLField(
        required=False, help_text="With `Prefer: respond-async`: where the finished job goes."
    )


class ImageEditDoc(serializers.Serializer[Any]):
    image = serializers.FileField(help_text="Or image[] (up to 16 files).")
    mask = serializers.FileField(required=False)
    prompt = serializers.CharField()
    model = serializers.CharField(required=False)
    n = serializers.IntegerField(required=False)
    size = serializers.CharField(required=False)
    quality = serializers.CharField(required=False)
    response_format = serializers.ChoiceField(choices=["b64_json", "url"], required=False)
    output_format = serializers.CharField(required=False)
    moderation = serializers.CharField(required=False)
    stream = serializers.BooleanField(required=False)
    webhook_url = serializers.URLField(required=False)


class ImageReferenceDoc(serializers.Serializer[Any]):
    image_url = serializers.CharField(
        help_text="An http(s) URL (fetched by the gateway; never a private address) or a "
        "base64 data URL. (OpenAI's `file_id` is refused: it names a file in one upstream "
        "account.)"
    )


class ImageEditJsonDoc(serializers.Serializer[Any]):
    images = ImageReferenceDoc(many=True, help_text="1 to 16 images to edit.")
    mask = ImageReferenceDoc(
        required=False, help_text="A PNG the size of the first image; transparent = edit here."
    )
    prompt = serializers.CharField()
    model = serializers.CharField(help_text="An alias (GET /v1/models).")
    n = serializers.IntegerField(required=False, min_value=1)
    size = serializers.CharField(required=False, help_text="WxH, 512/1K/2K/4K or auto.")
    quality = serializers.CharField(required=False)
    background = serializers.CharField(required=False)
    output_format = serializers.ChoiceField(choices=["png", "jpeg", "webp"], required=False)
    output_compression = serializers.IntegerField(required=False, min_value=0, max_value=100)
    moderation = serializers.CharField(required=False)
    input_fidelity = serializers.ChoiceField(choices=["high", "low"], required=False)
    response_format = serializers.ChoiceField(choices=["b64_json", "url"], required=False)
    user = serializers.CharField(required=False)
    stream = serializers.BooleanField(required=False)
    partial_images = serializers.IntegerField(required=False, min_value=0, max_value=3)
    provider = serializers.DictField(required=False, help_text="Per-provider options.")
    webhook_url = serializers.URLField(required=False)


class ImageDataDoc(serializers.Serializer[Any]):
    b64_json = serializers.CharField(required=False)
    url = serializers.CharField(required=False)
    revised_prompt = serializers.CharField(required=False)


class ImagesResponseDoc(serializers.Serializer[Any]):
    created = serializers.IntegerField()
    data = ImageDataDoc(many=True)  # type: ignore[assignment]
    size = serializers.CharField(required=False)
    quality = serializers.CharField(required=False)
    output_format = serializers.CharField(required=False)
    background = serializers.CharField(required=False)
    usage = serializers.DictField(required=False)


class ModelDoc(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    aperture = serializers.DictField(
        help_text="Provider, capabilities, and `available`: false when no deployment can "
        "serve the model now (none usable, or every deployment's circuit is open after "
        "repeated upstream failures)."
    )


class ImageJobDoc(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField(help_text="image.job")
    status = serializers.ChoiceField(
        choices=["queued", "running", "succeeded", "failed", "cancelled"]
    )
    model = serializers.CharField()
    created_at = serializers.IntegerField()
    started_at = serializers.IntegerField(allow_null=True)
    finished_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(help_text="The job and its result are deleted then.")
    result = ImagesResponseDoc(
        allow_null=True, help_text="Once succeeded: exactly the synchronous response body."
    )
    error = serializers.DictField(
        allow_null=True, help_text="Once failed: the error envelope a synchronous call answers."
    )


class JobDeliveryDoc(serializers.Serializer[Any]):
    attempt = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    delivered = serializers.BooleanField()
    duration_ms = serializers.IntegerField()
    created_at = serializers.IntegerField()


_EVENTS = {
    (200, "text/event-stream"): OpenApiResponse(
        OpenApiTypes.STR, description="With stream: true, OpenAI's image events."
    ),
    (202, "application/json"): OpenApiResponse(
        ImageJobDoc, description="With `Prefer: respond-async`: the job, queued (Location)."
    ),
}

_INFERENCE_HEADERS = [
    OpenApiParameter(
        "Prefer",
        str,
        OpenApiParameter.HEADER,
        description="`respond-async`: answer 202 with a job to poll (GET /v1/images/jobs/{id}).",
    ),
    OpenApiParameter(
        "Idempotency-Key",
        str,
        OpenApiParameter.HEADER,
        description="1-255 printable ASCII characters: the same request with the same key "
        "within 24 h returns the first answer, without a second upstream call or charge.",
    ),
]

generation_schema = extend_schema(
    tags=IMAGE_TAGS,
    parameters=_INFERENCE_HEADERS,
    request=ImageGenerationDoc,
    responses={(200, "application/json"): ImagesResponseDoc, **_EVENTS},
    summary="Generate images",
)
edit_schema = extend_schema(
    tags=IMAGE_TAGS,
    parameters=_INFERENCE_HEADERS,
    request={"multipart/form-data": ImageEditDoc, "application/json": ImageEditJsonDoc},
    responses={(200, "application/json"): ImagesResponseDoc, **_EVENTS},
    summary="Edit images",
    description="multipart/form-data as the openai SDK's images.edit sends it, or OpenAI's "
    'JSON shape with `images: [{"image_url": …}]`.',
)
model_list_schema = extend_schema(
    tags=IMAGE_TAGS,
    responses=inline_serializer(
        "ModelList", {"object": serializers.CharField(), "data": ModelDoc(many=True)}
    ),
    summary="The aliases this key may use",
    operation_id="v1_models_list",
)
model_detail_schema = extend_schema(
    tags=IMAGE_TAGS, responses=ModelDoc, summary="One alias and its capabilities"
)
job_list_schema = extend_schema(
    tags=IMAGE_TAGS,
    parameters=[
        OpenApiParameter(
            "status", str, enum=["queued", "running", "succeeded", "failed", "cancelled"]
        ),
        OpenApiParameter("limit", int, description="1 to 100 jobs a page (20)."),
        OpenApiParameter("cursor", str, description="From `next`."),
    ],
    responses=inline_serializer(
        "ImageJobList",
        {
            "object": serializers.CharField(),
            "data": ImageJobDoc(many=True),
            "has_more": serializers.BooleanField(),
            "next": serializers.CharField(allow_null=True),
        },
    ),
    summary="This key's async jobs, newest first (without their results)",
    operation_id="v1_images_jobs_list",
)
job_detail_schema = extend_schema(tags=IMAGE_TAGS, responses=ImageJobDoc, summary="One async job")
job_cancel_schema = extend_schema(
    tags=IMAGE_TAGS,
    request=None,
    responses={
        200: OpenApiResponse(ImageJobDoc, description="Cancelled (a queued job: no charge)."),
        202: OpenApiResponse(
            ImageJobDoc,
            description="A running job whose provider can stop it (Replicate): it ends "
            "`cancelled` at the next poll.",
        ),
    },
    summary="Cancel a queued job, or a running one its provider can stop (else 409)",
)
job_deliveries_schema = extend_schema(
    tags=IMAGE_TAGS,
    responses=inline_serializer(
        "JobDeliveryList",
        {"object": serializers.CharField(), "data": JobDeliveryDoc(many=True)},
    ),
    summary="The webhook delivery attempts of one async job",
)
