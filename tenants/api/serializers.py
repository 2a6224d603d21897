"""Input and output shapes of the workspace, team, key and audit routes."""

from datetime import datetime
from typing import Any

from django.utils import timezone
from rest_framework import serializers
from rest_framework.serializers import Serializer

from aperture.api_fields import StrictSerializer
from tenants.models import ApiKey, Workspace
from tenants.services import MAX_ROTATION_GRACE_SECONDS


class WorkspaceOut(Serializer[Any]):
    id = serializers.CharField(source="public_id")
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=Workspace.Status.choices)
    created_at = serializers.DateTimeField()


class WebhookSecretOut(Serializer[Any]):
    secret = serializers.CharField(
        help_text="Signs the workspace's webhooks, spend alerts and async jobs (Standard "
        "Webhooks, whsec_…). Shown in this response only: store it now. It replaces the "
        "previous secret at once."
    )
    rotated_at = serializers.DateTimeField()


class TeamOut(Serializer[Any]):
    id = serializers.CharField(source="public_id")
    slug = serializers.CharField()
    name = serializers.CharField()
    archived_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class TeamCreateIn(StrictSerializer):
    slug = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=200)


class TeamUpdateIn(StrictSerializer):
    name = serializers.CharField(max_length=200)


class TeamRef(Serializer[Any]):
    id = serializers.CharField(source="public_id")
    slug = serializers.CharField()


PER_USER_IMAGES_HELP = (
    "Images per end user (the request's `user`) per UTC day. Set, a request without `user` "
    "is refused (400)."
)
PER_USER_RPM_HELP = (
    "Requests per end user per minute. Set, a request without `user` is refused (400)."
)
WEBHOOK_URL_HELP = (
    "Where this key's finished async image jobs are POSTed, signed with the workspace's "
    "webhook secret (Standard Webhooks), unless a request names its own `webhook_url`. "
    "https on a public address (plain http only for hosts the operator allowlists); the "
    "workspace needs its secret first. Empty: none."
)


class KeyOut(Serializer[Any]):
    """A key as anyone may see it again: never its secret."""

    id = serializers.CharField(source="public_id")
    prefix = serializers.CharField(help_text="The key's visible start: apk_<id>_…")
    name = serializers.CharField()
    team = TeamRef()
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKey.Scope.choices))
    allowed_aliases = serializers.ListField(
        child=serializers.CharField(), help_text="Empty: every alias."
    )
    rpm_limit = serializers.IntegerField(allow_null=True)
    ipm_limit = serializers.IntegerField(allow_null=True)
    per_user_limit_images = serializers.IntegerField(
        allow_null=True, help_text=PER_USER_IMAGES_HELP
    )
    per_user_rpm = serializers.IntegerField(allow_null=True, help_text=PER_USER_RPM_HELP)
    webhook_url = serializers.CharField(help_text=WEBHOOK_URL_HELP)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    rotated_at = serializers.DateTimeField(allow_null=True)
    previous_secret_valid_until = serializers.DateTimeField(
        source="previous_secret_expires_at",
        allow_null=True,
        help_text="After a rotation with a grace period: when the old secret stops working.",
    )
    status = serializers.SerializerMethodField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_status(self, key: ApiKey) -> str:
        return key.status()


class KeyWithSecretOut(KeyOut):
    secret = serializers.CharField(
        help_text="The full key. Shown in this response only: store it now."
    )


def _limit(**kwargs: Any) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=10_000_000, allow_null=True, **kwargs)


def _webhook_url(**kwargs: Any) -> serializers.URLField:
    """Its host and the workspace's secret are checked by the service (tenants/services.py)."""
    return serializers.URLField(
        max_length=2000, allow_blank=True, required=False, help_text=WEBHOOK_URL_HELP, **kwargs
    )


def _future(value: datetime | None) -> datetime | None:
    if value is not None and value <= timezone.now():
        raise serializers.ValidationError("Must be in the future.")
    return value


class KeyCreateIn(StrictSerializer):
    name = serializers.CharField(max_length=200)
    team = serializers.CharField(
        required=False, max_length=32, help_text="Team id; default: the calling key's team."
    )
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.choices),
        default=lambda: [ApiKey.Scope.IMAGES],
        min_length=1,
    )
    allowed_aliases = serializers.ListField(
        child=serializers.CharField(max_length=128), default=list, max_length=200
    )
    rpm_limit = _limit(required=False, default=None)
    ipm_limit = _limit(required=False, default=None)
    per_user_limit_images = _limit(required=False, default=None, help_text=PER_USER_IMAGES_HELP)
    per_user_rpm = _limit(required=False, default=None, help_text=PER_USER_RPM_HELP)
    webhook_url = _webhook_url(default="")
    expires_at = serializers.DateTimeField(required=False, default=None, allow_null=True)

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        return _future(value)


class KeyUpdateIn(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False)
    allowed_aliases = serializers.ListField(
        child=serializers.CharField(max_length=128), required=False, max_length=200
    )
    rpm_limit = _limit(required=False)
    ipm_limit = _limit(required=False)
    per_user_limit_images = _limit(required=False, help_text=PER_USER_IMAGES_HELP)
    per_user_rpm = _limit(required=False, help_text=PER_USER_RPM_HELP)
    webhook_url = _webhook_url()
    expires_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        return _future(value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Nothing to change.")
        return attrs


class KeyRotateIn(StrictSerializer):
    grace_period_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROTATION_GRACE_SECONDS,
        default=0,
        help_text="How long the old secret keeps working (0 to 86400; default 0: stops now).",
    )


class KeyFilterIn(StrictSerializer):
    team = serializers.CharField(required=False, max_length=32)
    status = serializers.ChoiceField(choices=["active", "revoked", "expired"], required=False)
    scope = serializers.ChoiceField(choices=ApiKey.Scope.choices, required=False)
    cursor = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500)


class AuditEventOut(Serializer[Any]):
    actor = serializers.CharField()
    event = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    data = serializers.DictField()  # type: ignore[assignment]
    created_at = serializers.DateTimeField()


class AuditFilterIn(StrictSerializer):
    event = serializers.CharField(required=False, max_length=100)
    actor = serializers.CharField(required=False, max_length=200)
    target_id = serializers.CharField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    cursor = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500)
