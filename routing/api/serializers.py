"""Input and output shapes of the alias and credential routes. No secret is ever output."""

from typing import Any

from rest_framework import serializers

from aperture.api_fields import StrictSerializer
from routing.workspace_credentials import BYOK_PROVIDERS


class CredentialOut(serializers.Serializer[Any]):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    provider = serializers.CharField()
    base_url = serializers.CharField()
    api_version = serializers.CharField()
    options = serializers.DictField()
    secret = serializers.CharField(
        source="masked_secret", help_text="Masked: the last four characters at most."
    )
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class CredentialCreateIn(StrictSerializer):
    name = serializers.SlugField(max_length=64, help_text="Also its passthrough route name.")
    provider = serializers.ChoiceField(choices=BYOK_PROVIDERS)
    secret = serializers.CharField(max_length=4096, trim_whitespace=True, write_only=True)
    base_url = serializers.CharField(
        max_length=500,
        required=False,
        default="",
        allow_blank=True,
        help_text="Empty: the provider's root.",
    )
    api_version = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
    options = serializers.DictField(required=False, default=dict)


class CredentialRotateIn(StrictSerializer):
    secret = serializers.CharField(max_length=4096, trim_whitespace=True, write_only=True)


class CredentialCheckOut(serializers.Serializer[Any]):
    ok = serializers.BooleanField()
    provider = serializers.CharField()
    url = serializers.CharField(help_text="What was called (no secret in it).")
    status = serializers.IntegerField(allow_null=True, help_text="The provider's HTTP status.")
    message = serializers.CharField()
    latency_ms = serializers.IntegerField()


class CredentialRef(serializers.Serializer[Any]):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    provider = serializers.CharField()


class DeploymentOut(serializers.Serializer[Any]):
    id = serializers.CharField(source="public_id")
    credential = CredentialRef()
    upstream_model = serializers.CharField()
    priority = serializers.IntegerField()
    weight = serializers.IntegerField()
    timeout_seconds = serializers.IntegerField()
    enabled = serializers.BooleanField()


class AliasOut(serializers.Serializer[Any]):
    id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    owner = serializers.ChoiceField(
        choices=["workspace", "platform"],
        help_text="platform: an operator's alias, visible to every workspace.",
    )
    enabled = serializers.BooleanField()
    available = serializers.BooleanField(
        help_text="Whether a deployment can serve it now (false also while every "
        "deployment's circuit is open after repeated upstream failures)."
    )
    provider = serializers.CharField(allow_null=True)
    capabilities = serializers.DictField(allow_null=True, help_text="As GET /v1/models says.")
    deployments = DeploymentOut(many=True, help_text="Only for the workspace's own aliases.")
    created_at = serializers.DateTimeField()


class DeploymentIn(StrictSerializer):
    credential = serializers.CharField(max_length=32, help_text="A credential of this workspace.")
    upstream_model = serializers.CharField(max_length=200)
    priority = serializers.IntegerField(default=0, min_value=-1000, max_value=1000)
    weight = serializers.IntegerField(default=1, min_value=1, max_value=1000)
    timeout_seconds = serializers.IntegerField(default=120, min_value=1, max_value=900)


class AliasCreateIn(StrictSerializer):
    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
        help_text="What callers send as `model`; shadows a platform alias of that name.",
    )
    description = serializers.CharField(
        max_length=300, required=False, default="", allow_blank=True
    )
    deployments = DeploymentIn(many=True, min_length=1, max_length=20)  # type: ignore[call-arg]
