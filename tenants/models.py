"""Tenancy: workspaces, their teams, the teams' API keys, and the audit trail."""

from datetime import datetime
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from aperture.ids import public_id


class Workspace(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    slug = models.SlugField(max_length=64, unique=True, help_text="Stable identifier, e.g. acme.")
    name = models.CharField(max_length=200)
    status = models.CharField(
        max_length=16,
        choices=Status.choices,
        default=Status.ACTIVE,
        help_text="A suspended workspace's keys get 403 on every request.",
    )
    # Signs the spend alerts' webhooks (Standard Webhooks, whsec_…): encrypted at rest
    # (aperture/crypto.py), shown to the tenant once when rotated (tenants/webhook_secrets.py).
    webhook_secret_ciphertext = models.TextField(
        blank=True,
        editable=False,
        help_text="The webhook signing secret, encrypted; empty until a tenant rotates one.",
    )
    webhook_secret_rotated_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the webhook secret was last set."
    )
    price_multiplier = models.DecimalField(
        max_digits=7,
        decimal_places=4,
        default=Decimal("1"),
        validators=[MinValueValidator(Decimal("0.0001")), MaxValueValidator(Decimal("100"))],
        help_text="Markup on provider prices (1.25 for a reseller's 25%): the workspace is "
        "charged the provider's cost times this; usage records keep both.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name or self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Team(models.Model):
    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="teams")
    slug = models.SlugField(max_length=64, help_text="Unique within the workspace.")
    name = models.CharField(max_length=200)
    archived_at = models.DateTimeField(
        null=True, blank=True, help_text="An archived team's keys are refused."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workspace__slug", "slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "slug"], name="team_slug_unique_in_workspace"
            )
        ]

    def __str__(self) -> str:
        return f"{self.workspace.slug}/{self.slug}"


class ApiKey(models.Model):
    """A tenant's key. Only a peppered HMAC of the secret is stored; see tenants/keys.py."""

    class Scope(models.TextChoices):
        IMAGES = "images", "Images (inference API)"
        MANAGE_TEAM = "manage:team", "Manage own team"
        MANAGE_WORKSPACE = "manage:workspace", "Manage whole workspace"

    public_id = models.CharField(
        max_length=32, unique=True, editable=False, help_text="The key's public part (apk_<id>_…)."
    )
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(
        default=list, help_text="Any of: images, manage:team, manage:workspace."
    )
    allowed_aliases = models.JSONField(
        default=list, blank=True, help_text="Alias names this key may use; empty means all."
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute.")
    ipm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Images per minute.")
    per_user_limit_images = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Images per end user (the request's `user`) per UTC day; set, a request "
        "without `user` is refused.",
    )
    per_user_rpm = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests per end user per minute; set, a request without `user` is refused.",
    )
    webhook_url = models.URLField(
        max_length=2000,
        blank=True,
        help_text="Where this key's finished async image jobs are delivered (signed), unless "
        "a request names its own.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Updated at most once a minute."
    )
    # Rotation: the secret a rotation replaced keeps working until its grace period ends.
    previous_secret_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="The secret replaced by the last rotation is accepted until then.",
    )
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=Q(secret_hash__regex=r"^[0-9a-f]{64}$"),  # noqa: S106 - a shape, not a secret
                name="apikey_hash_is_sha256_hex",
            ),
        ]
        indexes = [
            # Lists of a team's keys in the admin and the management API.
            models.Index(fields=["team", "-created_at"], name="apikey_team_created"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (apk_{self.public_id}_…)"

    @property
    def prefix(self) -> str:
        return f"apk_{self.public_id}"

    def status(self, now: datetime | None = None) -> str:
        """active, revoked or expired, as the management API reports it."""
        now = now or timezone.now()
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now


class AuditEvent(models.Model):
    """Who changed what, when: written by every service that changes state."""

    actor = models.CharField(
        max_length=200, help_text="operator:<user>, key:<public id> or system:<what>."
    )
    event = models.CharField(max_length=100, help_text="Dotted name, e.g. key.created.")
    target_type = models.CharField(max_length=100)
    target_id = models.CharField(max_length=64)
    workspace = models.ForeignKey(
        Workspace, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # A workspace's history, newest first (admin filter, management API).
            models.Index(fields=["workspace", "-created_at"], name="audit_workspace_created"),
            # Everything that happened to one object.
            models.Index(fields=["target_type", "target_id"], name="audit_target"),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.target_type}:{self.target_id} by {self.actor}"
