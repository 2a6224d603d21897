"""Routing: provider credentials, the caller-facing model aliases and their deployments."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from aperture import crypto
from aperture.ids import public_id
from tenants.models import Workspace


class Provider(models.TextChoices):
    LOCAL = "local", "Local (built-in renderer)"
    OPENAI = "openai", "OpenAI"
    AZURE = "azure", "Azure OpenAI"
    GEMINI = "gemini", "Google Gemini / Imagen"
    SEEDREAM = "seedream", "Volcengine Ark Seedream"
    XAI = "xai", "xAI"
    OPENROUTER = "openrouter", "OpenRouter"
    STABILITY = "stability", "Stability AI"
    BFL = "bfl", "Black Forest Labs"
    REPLICATE = "replicate", "Replicate"
    ZAI = "zai", "Z.AI / Zhipu (CogView, GLM-Image)"


def _mask(hint: str) -> str:
    return f"••••{hint}" if hint else ""


class ProviderCredential(models.Model):
    """An upstream account. The secret is encrypted at rest and never serialized back out."""

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    workspace = models.ForeignKey(
        Workspace,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="credentials",
        help_text="Empty: platform-wide, usable by every workspace's platform aliases.",
    )
    name = models.SlugField(max_length=64, help_text="Also the passthrough route: /<name>/<path>.")
    provider = models.CharField(max_length=32, choices=Provider.choices)
    base_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="The provider's root, e.g. https://api.openai.com (adapters add /v1/…).",
    )
    secret_ciphertext = models.TextField(blank=True, editable=False)
    secret_hint = models.CharField(max_length=4, blank=True, editable=False)
    api_version = models.CharField(max_length=64, blank=True, help_text="Azure: api-version.")
    extra_headers = models.JSONField(default=dict, blank=True)
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text='Provider options sent with every call, e.g. {"watermark": true} for Seedream.',
    )
    passthrough_enabled = models.BooleanField(
        default=False, help_text="Allow tenants to call /<name>/<path> raw. Off by default."
    )
    passthrough_path_prefixes = models.JSONField(
        default=list, blank=True, help_text="If set, passthrough is limited to these path prefixes."
    )
    free = models.BooleanField(
        default=False,
        help_text="Serve models without a price at no charge (every deployment and passthrough "
        "call on this credential). Off: a model without a price is refused (model_not_priced).",
    )
    passthrough_notes = models.TextField(
        blank=True,
        default="",
        help_text="Markdown for tenants, returned by GET /v1/passthrough: the native endpoint "
        "path, a payload template, a curl example. No secrets: every tenant that can see this "
        "credential reads it.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "name"],
                condition=Q(workspace__isnull=False),
                name="credential_name_unique_in_workspace",
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(workspace__isnull=True),
                name="credential_name_unique_platform",
            ),
        ]

    def __str__(self) -> str:
        scope = self.workspace.slug if self.workspace else "platform"
        return f"{self.name} ({self.provider}, {scope})"

    def set_secret(self, plaintext: str) -> None:
        self.secret_ciphertext = crypto.encrypt(plaintext) if plaintext else ""
        self.secret_hint = plaintext[-4:] if len(plaintext) >= 8 else ""

    def secret(self) -> str:
        return crypto.decrypt(self.secret_ciphertext) if self.secret_ciphertext else ""

    @property
    def masked_secret(self) -> str:
        if not self.secret_ciphertext:
            return "(none)"
        return _mask(self.secret_hint) or "••••"


class ModelAlias(models.Model):
    """The name tenants pass as `model`; a workspace alias shadows a platform one of that name."""

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    workspace = models.ForeignKey(
        Workspace,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="aliases",
        help_text="Empty: a platform alias, visible to every workspace.",
    )
    name = models.CharField(max_length=128, help_text="What callers send as `model`.")
    description = models.CharField(max_length=300, blank=True)

    class Strategy(models.TextChoices):
        PRIORITY = "priority", "Priority (lowest first)"
        WEIGHTED = "weighted", "Weighted (spread by weight)"

    strategy = models.CharField(
        max_length=16,
        choices=Strategy.choices,
        default=Strategy.PRIORITY,
        help_text="How deployments are ordered; both skip deployments whose circuit is open.",
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="Upstream calls per request at most, each on a different deployment.",
    )
    retry_after_timeout = models.BooleanField(
        default=False,
        help_text="Move on to the next deployment after a read timeout (the first provider "
        "may already have charged for the call).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "model aliases"
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "name"],
                condition=Q(workspace__isnull=False),
                name="alias_name_unique_in_workspace",
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(workspace__isnull=True),
                name="alias_name_unique_platform",
            ),
        ]
        indexes = [
            # Alias resolution: name within (workspace, platform).
            models.Index(fields=["name", "workspace"], name="alias_name_workspace"),
        ]

    def __str__(self) -> str:
        scope = self.workspace.slug if self.workspace else "platform"
        return f"{self.name} ({scope})"


class Deployment(models.Model):
    """One way to serve an alias: a credential and the upstream model id to call there."""

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    alias = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="deployments")
    credential = models.ForeignKey(
        ProviderCredential, on_delete=models.PROTECT, related_name="deployments"
    )
    upstream_model = models.CharField(max_length=200, help_text="The provider's model id.")
    priority = models.IntegerField(default=0, help_text="Lower is tried first; fallback order.")
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of traffic under the alias's weighted strategy."
    )
    timeout_seconds = models.PositiveIntegerField(
        default=120, help_text="Longest wait for the upstream's answer (read timeout)."
    )
    connect_timeout_seconds = models.FloatField(
        default=3.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(60)],
        help_text="Longest wait to connect: a dead host costs this much, not the read timeout.",
    )
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text="Provider options for this deployment (over the credential's), e.g. "
        '{"api": "images"} for OpenRouter\'s Image API.',
    )
    free = models.BooleanField(
        default=False,
        help_text="Serve this deployment at no charge even if its model has no price. Off: a "
        "model without a price is refused (model_not_priced).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(weight__gte=1), name="deployment_weight_positive"),
            models.CheckConstraint(
                condition=Q(timeout_seconds__gte=1) & Q(timeout_seconds__lte=900),
                name="deployment_timeout_range",
            ),
        ]
        indexes = [
            # The router: an alias's enabled deployments in priority order.
            models.Index(fields=["alias", "enabled", "priority"], name="deployment_route"),
        ]

    def __str__(self) -> str:
        return f"{self.alias.name} → {self.credential.name}:{self.upstream_model}"


class GuardrailPolicy(models.Model):
    """A rule a request's prompt (and, for moderation, its images) must pass before money is
    spent: the platform's for everyone, a workspace's for its own keys only."""

    class Kind(models.TextChoices):
        KEYWORDS = "keywords", "Keywords (whole words, any case or accent)"
        REGEX = "regex", "Regular expressions (RE2, linear time)"
        PII = "pii", "Personal data (email, phone, payment card, IBAN)"
        MODERATION = "moderation", "Moderation model (OpenAI's moderation endpoint)"

    class Action(models.TextChoices):
        BLOCK = "block", "Block (400 content_policy_violation, no upstream call)"
        FLAG = "flag", "Flag (served; the usage record names the policy)"

    class Route(models.TextChoices):
        GENERATIONS = "generations", "Generations"
        EDITS = "edits", "Edits"
        PASSTHROUGH = "passthrough", "Passthrough image routes"

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    workspace = models.ForeignKey(
        Workspace,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="guardrails",
        help_text="Empty: a platform policy, applied to every workspace.",
    )
    name = models.SlugField(max_length=64, help_text="Named in the error a blocked caller gets.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    applies_to = models.JSONField(
        default=list,
        blank=True,
        help_text='Routes checked: any of "generations", "edits", "passthrough" (jobs run as '
        "generations and edits). Empty: all of them.",
    )
    patterns = models.JSONField(
        default=list,
        blank=True,
        help_text="keywords: the words or phrases (any case or accent); regex: RE2 patterns "
        "(no backreferences or lookaround) matched on the prompt as sent: (?i) ignores case.",
    )
    detectors = models.JSONField(
        default=list,
        blank=True,
        help_text='pii: any of "email", "phone", "payment_card", "iban". Empty: all four.',
    )
    credential = models.ForeignKey(
        ProviderCredential,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="guardrails",
        help_text="moderation: the OpenAI credential the moderation endpoint is called with.",
    )
    moderation_model = models.CharField(max_length=64, default="omni-moderation-latest")
    categories = models.JSONField(
        default=dict,
        blank=True,
        help_text='moderation: {"category": threshold from 0 to 1}; a score at or above a '
        "threshold matches. Empty: the model's own verdict (`flagged`).",
    )
    check_prompt = models.BooleanField(
        default=True, help_text="moderation: check the prompt before the upstream call."
    )
    check_output = models.BooleanField(
        default=False,
        help_text="moderation: check the generated images before they are returned (not on "
        "streams or passthrough).",
    )
    allow_partial = models.BooleanField(
        default=False,
        help_text="Output: return the images that passed when others were withheld; off, a "
        "withheld image fails the whole request.",
    )
    charge_withheld = models.BooleanField(
        default=True, help_text="Output: charge withheld images (the provider charged for them)."
    )
    timeout_seconds = models.FloatField(
        default=3.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(30)],
        help_text="moderation: longest wait for the moderation endpoint.",
    )
    fail_open = models.BooleanField(
        default=False,
        help_text="moderation: when the endpoint fails or times out, serve the request "
        "(on) or refuse it with 503 guardrail_unavailable (off).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workspace_id", "name"]
        verbose_name = "guardrail policy"
        verbose_name_plural = "guardrail policies"
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "name"],
                condition=Q(workspace__isnull=False),
                name="guardrail_name_unique_in_workspace",
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(workspace__isnull=True),
                name="guardrail_name_unique_platform",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["keywords", "regex", "pii", "moderation"]),
                name="guardrail_kind_known",
            ),
            models.CheckConstraint(
                condition=Q(action__in=["block", "flag"]), name="guardrail_action_known"
            ),
            models.CheckConstraint(
                condition=~Q(kind="moderation") | Q(credential__isnull=False),
                name="guardrail_moderation_has_credential",
            ),
        ]
        indexes = [
            # The pipeline: the enabled policies of the platform and of one workspace.
            models.Index(fields=["workspace", "enabled"], name="guardrail_scope"),
        ]

    def __str__(self) -> str:
        scope = self.workspace.slug if self.workspace else "platform"
        return f"{self.name} ({scope}, {self.kind}, {self.action})"


def job_public_id() -> str:
    return f"job_{public_id()}{public_id()}"


class ImageJob(models.Model):
    """One asynchronous generation or edit (routing/jobs): submitted with
    `Prefer: respond-async`, admitted at once (its hold lasts until it ends), run by a
    worker through the same pipeline as a synchronous call, polled, and deleted with its
    result when it expires."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Webhook(models.TextChoices):
        NONE = "none"
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    public_id = models.CharField(max_length=40, unique=True, default=job_public_id, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="image_jobs")
    key = models.ForeignKey("tenants.ApiKey", on_delete=models.CASCADE, related_name="image_jobs")
    request_id = models.CharField(max_length=128)  # the submit's: the usage record's too
    endpoint = models.CharField(max_length=32)  # images.generations | images.edits
    model = models.CharField(max_length=128)  # the alias asked for
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # What the worker needs to run it: the body's fields, the stored input images (edits),
    # the hold taken at submit, and the meter's attribution (routing/jobs/submit.py).
    request = models.JSONField(default=dict)
    inputs = models.JSONField(default=list)
    admission = models.JSONField(default=dict)
    context = models.JSONField(default=dict)
    result_name = models.CharField(max_length=300, blank=True)  # storage: the result body
    error = models.JSONField(null=True, blank=True)  # the envelope a sync call would return
    error_status = models.PositiveSmallIntegerField(null=True, blank=True)
    cost_micro = models.BigIntegerField(default=0)
    webhook_url = models.URLField(max_length=2000, blank=True)
    webhook_status = models.CharField(max_length=16, choices=Webhook.choices, default=Webhook.NONE)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    # While running: its worker's last word that it is alive (routing/jobs/run.py).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()  # the job and its result are deleted then

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="image_job_status_known",
            ),
        ]
        indexes = [
            # A key's jobs, newest first (GET /v1/images/jobs), by status too.
            models.Index(fields=["key", "-created_at", "-id"], name="image_job_by_key"),
            # The sweeps: unfinished jobs, and expired ones.
            models.Index(fields=["status", "created_at"], name="image_job_by_status"),
            models.Index(fields=["expires_at"], name="image_job_expiry"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"


class JobDelivery(models.Model):
    """One attempt at delivering a finished job to its webhook."""

    job = models.ForeignKey(ImageJob, on_delete=models.CASCADE, related_name="deliveries")
    attempt = models.PositiveIntegerField()
    url = models.URLField(max_length=2000)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    delivered = models.BooleanField(default=False)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["job", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="job_delivery_attempt_unique")
        ]

    def __str__(self) -> str:
        return f"{self.job.public_id} attempt {self.attempt}"


class IdempotentRequest(models.Model):
    """An inference POST sent with an `Idempotency-Key` (routing/idempotency.py): the first
    one's answer, replayed to the same key and body for IDEMPOTENCY_TTL_SECONDS."""

    class Status(models.TextChoices):
        IN_FLIGHT = "in_flight"
        DONE = "done"

    key = models.ForeignKey(
        "tenants.ApiKey", on_delete=models.CASCADE, related_name="idempotent_requests"
    )
    idempotency_key = models.CharField(max_length=255)
    # sha256 of method, target, body and the headers that change the answer (routing/idempotency.py)
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_FLIGHT)
    job = models.ForeignKey(ImageJob, null=True, blank=True, on_delete=models.CASCADE)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_name = models.CharField(max_length=300, blank=True)  # storage: the body
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key", "idempotency_key"], name="idempotency_key_unique_per_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.idempotency_key} ({self.status})"
