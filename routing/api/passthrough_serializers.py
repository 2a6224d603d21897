"""Shapes of the passthrough listing (GET /v1/passthrough, GET /api/v1/passthrough).

Output only what routing/passthrough/discovery.py assembles: never a secret, a base URL or
an extra header's value.
"""

from typing import Any

from rest_framework import serializers

from aperture.api_fields import StrictSerializer


class GatewayKeyOut(serializers.Serializer[Any]):
    native = serializers.CharField(
        help_text="Where this provider's own clients send a key, if the gateway reads it there; "
        "else a Bearer token."
    )
    accepted = serializers.ListField(
        child=serializers.CharField(),
        help_text="Every place the gateway reads the key from on a passthrough call; it is "
        "removed before the call goes upstream.",
    )


class NativeImageRouteOut(serializers.Serializer[Any]):
    method = serializers.CharField()
    path = serializers.CharField(
        help_text="Readable: {a|b} one of, [x] optional, {name} one path segment, * any text "
        "within a segment, ** anything."
    )
    pattern = serializers.CharField(help_text="The regular expression a path must match whole.")
    charge = serializers.ChoiceField(
        choices=["per_image", "free", "refused"],
        help_text="per_image: counted and charged per image as on /v1 (a model without a price "
        "is refused, 400 model_not_priced); free: this credential serves at no charge; refused: "
        "the gateway cannot count its images (400 route_not_priced). Any other POST, PUT or "
        "PATCH is refused the same way unless the credential is free; reads cost nothing.",
    )


class PassthroughEntryOut(serializers.Serializer[Any]):
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="Call /{name}/{native path}.")
    provider = serializers.CharField()
    owner = serializers.ChoiceField(
        choices=["workspace", "platform"],
        help_text="workspace: the workspace's own credential, shadowing a platform one of "
        "that name.",
    )
    all_paths = serializers.BooleanField(help_text="Every native path is open.")
    path_prefixes = serializers.ListField(
        child=serializers.CharField(),
        help_text="Otherwise only paths at or below these (by whole segments); 403 elsewhere.",
    )
    gateway_key = GatewayKeyOut()
    upstream_auth_header = serializers.CharField(
        help_text="The gateway sends the provider's credential in this header: send none."
    )
    extra_headers = serializers.ListField(
        child=serializers.CharField(),
        help_text="Headers the gateway adds to every call (names only); a caller's header of "
        "the same name is replaced.",
    )
    free = serializers.BooleanField(help_text="Every call on this credential is free.")
    image_routes = NativeImageRouteOut(many=True)
    notes = serializers.CharField(
        allow_blank=True, help_text="The operator's notes (Markdown): paths, payloads, examples."
    )


class PassthroughListOut(serializers.Serializer[Any]):
    object = serializers.CharField()
    key = serializers.CharField(
        allow_null=True, help_text="The key's public id; null: any key of the workspace."
    )
    reason = serializers.CharField(
        allow_null=True, help_text="Why the list is empty: this key may make no passthrough call."
    )
    data = PassthroughEntryOut(many=True)  # type: ignore[assignment]


class PassthroughFilterIn(StrictSerializer):
    key = serializers.CharField(
        required=False,
        max_length=32,
        help_text="A key's id (as GET /api/v1/keys lists it): what that key may call.",
    )
