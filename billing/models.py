"""Billing: prices, budgets with in-flight reservations, usage records and daily rollups.

Money is integer micro-USD everywhere. Budgets are changed only by conditional atomic
UPDATEs (billing/budgets.py), and CheckConstraints refuse any write that would overspend.
"""

from datetime import UTC, datetime

from django.db import models
from django.db.models import F, Q

from aperture.ids import public_id
from tenants.models import ApiKey, Team, Workspace

LIFETIME_START = datetime(1970, 1, 1, tzinfo=UTC)


class Price(models.Model):
    """What an upstream model costs: per image by size and quality, and/or per token."""

    provider = models.CharField(max_length=32)
    model_pattern = models.CharField(
        max_length=200, help_text="The upstream model id, or a prefix ending in * (gpt-image-1*)."
    )
    size = models.CharField(max_length=20, blank=True, help_text="WxH, or empty for any size.")
    quality = models.CharField(max_length=20, blank=True, help_text="Empty for any quality.")
    per_image_micro = models.BigIntegerField(
        null=True, blank=True, help_text="Micro-USD per output image."
    )
    text_input_per_mtok_micro = models.BigIntegerField(
        null=True, blank=True, help_text="Micro-USD per million text input tokens."
    )
    image_input_per_mtok_micro = models.BigIntegerField(
        null=True, blank=True, help_text="Micro-USD per million image input tokens."
    )
    image_output_per_mtok_micro = models.BigIntegerField(
        null=True, blank=True, help_text="Micro-USD per million image output tokens."
    )
    tier = models.CharField(
        max_length=8,
        blank=True,
        help_text='Resolution tier this row prices ("512", "1K", "2K", "4K"); empty for any.',
    )
    first_megapixel_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Per megapixel: micro-USD for an output image's first megapixel.",
    )
    extra_megapixel_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Per megapixel: micro-USD for each further megapixel, rounded up.",
    )
    per_input_image_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Surcharge in micro-USD per input or reference image.",
    )
    minimum_micro = models.BigIntegerField(
        null=True, blank=True, help_text="The least a served request costs, in micro-USD."
    )
    note = models.CharField(
        max_length=200,
        blank=True,
        help_text="Where the figure comes from; 'unconfirmed' when no official source was checked.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "model_pattern", "size", "quality"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model_pattern", "size", "quality", "tier"],
                name="price_unique_variant_tier",
            ),
            models.CheckConstraint(
                condition=Q(per_image_micro__isnull=True) | Q(per_image_micro__gte=0),
                name="price_per_image_not_negative",
            ),
        ]
        indexes = [
            # Price lookup: every variant of one provider.
            models.Index(fields=["provider"], name="price_provider"),
        ]

    def __str__(self) -> str:
        variant = " ".join(v for v in (self.size, self.quality) if v)
        return f"{self.provider}:{self.model_pattern} {variant}".strip()

    @property
    def token_priced(self) -> bool:
        return self.image_output_per_mtok_micro is not None


def default_alert_thresholds() -> list[int]:
    return [50, 80, 100]


class Budget(models.Model):
    """A spending cap on a workspace, a team or a key, for a day, a month or a lifetime.

    `period_start` says which period `used_*` and `reserved_*` belong to; a request in a new
    period resets them (no job needed). Reservations hold money while a request is in flight.
    """

    class Scope(models.TextChoices):
        WORKSPACE = "workspace", "Workspace"
        TEAM = "team", "Team"
        KEY = "key", "Key"

    class Period(models.TextChoices):
        DAY = "day", "Day (UTC)"
        MONTH = "month", "Calendar month (UTC)"
        LIFETIME = "lifetime", "Lifetime"

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="budgets")
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    scope = models.CharField(max_length=16, choices=Scope.choices)
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTH)
    limit_micro = models.BigIntegerField(
        null=True, blank=True, help_text="Spending limit in micro-USD (1 USD = 1,000,000)."
    )
    limit_images = models.BigIntegerField(null=True, blank=True, help_text="Image limit.")
    period_start = models.DateTimeField(default=LIFETIME_START, editable=False)
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds,
        blank=True,
        help_text="Spend alerts: percentages of the limit, each fired once per period "
        "(e.g. [50, 80, 100]). Empty: no alerts.",
    )
    alert_webhook_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="Spend alerts are POSTed here, signed with the workspace's webhook secret.",
    )
    alert_emails = models.JSONField(
        default=list, blank=True, help_text="Spend alerts are also emailed to these addresses."
    )
    used_micro = models.BigIntegerField(default=0, editable=False)
    reserved_micro = models.BigIntegerField(default=0, editable=False)
    used_images = models.BigIntegerField(default=0, editable=False)
    reserved_images = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workspace", "scope", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(limit_micro__isnull=False) | Q(limit_images__isnull=False),
                name="budget_has_a_limit",
            ),
            models.CheckConstraint(
                condition=Q(limit_micro__isnull=True)
                | Q(used_micro__lte=F("limit_micro") - F("reserved_micro")),
                name="budget_money_never_overspent",
            ),
            models.CheckConstraint(
                condition=Q(limit_images__isnull=True)
                | Q(used_images__lte=F("limit_images") - F("reserved_images")),
                name="budget_images_never_overspent",
            ),
            models.CheckConstraint(
                condition=Q(used_micro__gte=0)
                & Q(reserved_micro__gte=0)
                & Q(used_images__gte=0)
                & Q(reserved_images__gte=0),
                name="budget_counters_not_negative",
            ),
            models.CheckConstraint(
                condition=(Q(scope="workspace") & Q(team__isnull=True) & Q(key__isnull=True))
                | (Q(scope="team") & Q(team__isnull=False) & Q(key__isnull=True))
                | (Q(scope="key") & Q(key__isnull=False)),
                name="budget_scope_matches_target",
            ),
            # One budget per target and period (a partial unique index per scope): two
            # concurrent creations of the same budget leave one row; the other is a 409.
            models.UniqueConstraint(
                fields=["workspace", "period"],
                condition=Q(scope="workspace"),
                name="budget_one_per_workspace_period",
                violation_error_message="This workspace already has a budget for this period.",
            ),
            models.UniqueConstraint(
                fields=["team", "period"],
                condition=Q(scope="team"),
                name="budget_one_per_team_period",
                violation_error_message="This team already has a budget for this period.",
            ),
            models.UniqueConstraint(
                fields=["key", "period"],
                condition=Q(scope="key"),
                name="budget_one_per_key_period",
                violation_error_message="This key already has a budget for this period.",
            ),
        ]
        indexes = [
            # Budgets in scope of a request: by workspace, then filtered to its team and key.
            models.Index(fields=["workspace", "scope"], name="budget_workspace_scope"),
        ]

    def __str__(self) -> str:
        target = {"workspace": self.workspace_id, "team": self.team_id, "key": self.key_id}
        return f"{self.scope} {target[self.scope]} {self.period} budget"


class Reservation(models.Model):
    """Money and images held on one budget while one request is in flight."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="reservations")
    request_id = models.CharField(max_length=128)
    amount_micro = models.BigIntegerField()
    images = models.BigIntegerField()
    period_start = models.DateTimeField()
    created_at = models.DateTimeField(db_index=True)  # the reaper's query: oldest first
    # An async job's hold lasts until the job ends, not RESERVATION_TTL_SECONDS: the reaper
    # releases it after this (None: a request's hold, reaped by its age).
    held_until = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micro__gte=0) & Q(images__gte=0),
                name="reservation_not_negative",
            )
        ]

    def __str__(self) -> str:
        return f"{self.amount_micro} µUSD / {self.images} images for {self.request_id}"


class BudgetLease(models.Model):
    """A slice of one budget's room leased by one gateway process, which admits requests
    from it locally (billing/leases.py). `amount_*` is counted in the budget's `reserved_*`
    until spent or returned; a slice whose holder stopped renewing it returns after
    `expires_at`."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="leases")
    holder = models.CharField(max_length=128)  # host:pid:token of the process
    period_start = models.DateTimeField()
    amount_micro = models.BigIntegerField()
    images = models.BigIntegerField()
    expires_at = models.DateTimeField(db_index=True)
    # Admits nothing more: what it still holds is held by its requests in flight.
    retired = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micro__gte=0) & Q(images__gte=0),
                name="budget_lease_not_negative",
            )
        ]

    def __str__(self) -> str:
        return f"{self.amount_micro} µUSD / {self.images} images of budget {self.budget_id}"


class BudgetCharge(models.Model):
    """A settled request's charge to one slice, written while another settlement of the same
    process is being written (billing/leases.py): still counted in its lease's `amount_*`
    (so in the budget's `reserved_*`) until the process's next settlement, its keeper, or
    the lease's return moves it to the budget's `used_*` with the rest."""

    lease = models.ForeignKey(BudgetLease, on_delete=models.CASCADE, related_name="+")
    budget_id = models.BigIntegerField()
    freed_micro = models.BigIntegerField()  # off the slice and the budget's reserved amounts
    freed_images = models.BigIntegerField()
    cost_micro = models.BigIntegerField()  # onto the budget's used amounts
    cost_images = models.BigIntegerField()

    class Meta:
        constraints = [
            # Never more than it frees (leases._write): moving it cannot raise used + reserved.
            models.CheckConstraint(
                condition=Q(cost_micro__gte=0)
                & Q(cost_images__gte=0)
                & Q(cost_micro__lte=F("freed_micro"))
                & Q(cost_images__lte=F("freed_images")),
                name="budget_charge_within_what_it_frees",
            )
        ]

    def __str__(self) -> str:
        return f"{self.cost_micro} µUSD / {self.cost_images} images on lease {self.lease_id}"


class UsageRecord(models.Model):
    """One row per authenticated request: served, refused or failed."""

    request_id = models.CharField(max_length=128)  # the gateway's own (req_…)
    client_request_id = models.CharField(
        max_length=128,
        blank=True,
        default="",
        help_text="The caller's x-client-request-id or x-request-id, if it sent one.",
    )
    created_at = models.DateTimeField()
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    alias = models.CharField(max_length=128, blank=True)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    images = models.PositiveIntegerField(default=0)
    size = models.CharField(max_length=20, blank=True)
    quality = models.CharField(max_length=20, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_micro = models.BigIntegerField(default=0)
    upstream_cost_micro = models.BigIntegerField(
        null=True, blank=True, help_text="What the upstream said the call cost it (OpenRouter)."
    )
    total_ms = models.PositiveIntegerField(default=0)
    upstream_ms = models.PositiveIntegerField(default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)
    method = models.CharField(max_length=16, blank=True, help_text="Passthrough: HTTP method.")
    path = models.CharField(
        max_length=500, blank=True, help_text="Passthrough: the provider's native path."
    )
    attempts = models.JSONField(
        default=list,
        blank=True,
        help_text="Every upstream call: attempt, deployment, provider, outcome, ms.",
    )
    provider_cost_micro = models.BigIntegerField(
        default=0,
        help_text="What the call cost at the provider's price, before the workspace's "
        "multiplier (cost_micro is what the tenant was charged).",
    )
    price_snapshot = models.JSONField(
        default=dict,
        blank=True,
        help_text="The price applied: its id, rule and the figures used, as they were.",
    )
    end_user = models.CharField(
        max_length=256, blank=True, help_text="The request's `user` (the tenant's end user)."
    )
    metadata = models.JSONField(
        default=dict, blank=True, help_text="The request's `metadata`: string keys and values."
    )
    guardrails = models.JSONField(
        default=list,
        blank=True,
        help_text="Guardrail policies that matched: [{policy, scope, action, on}], where "
        "action is block, flag or withhold and on is prompt or output.",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(cost_micro__gte=0), name="usage_cost_not_negative")
        ]
        indexes = [
            # Usage of a workspace over a date range (admin, management API, rollups).
            models.Index(fields=["workspace", "created_at"], name="usage_workspace_time"),
            # Usage of one key over time.
            models.Index(fields=["key", "created_at"], name="usage_key_time"),
            # The daily rollup's scan of one day.
            models.Index(fields=["created_at"], name="usage_time"),
            # Usage of one end user (the request's `user`) over time: filters and per-user
            # summaries of the management API.
            models.Index(fields=["workspace", "end_user", "created_at"], name="usage_end_user"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.status}"


class DailyUsage(models.Model):
    """Per workspace/team/key/alias/day aggregates for dashboards (written by a Celery task)."""

    day = models.DateField()
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    alias = models.CharField(max_length=128, blank=True)
    requests = models.PositiveIntegerField(default=0)
    images = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cost_micro = models.BigIntegerField(default=0)
    p50_ms = models.PositiveIntegerField(default=0)
    p95_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "workspace", "team", "key", "alias"], name="daily_usage_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.alias or '-'}: {self.requests} requests"


class SpendAlert(models.Model):
    """A budget crossed one of its alert thresholds in a period: fired once, then delivered
    to the budget's webhook and email addresses."""

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries exhausted)"
        NONE = "none", "Nowhere to deliver"

    public_id = models.CharField(max_length=32, unique=True, default=public_id, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the limit.")
    used_micro = models.BigIntegerField(default=0)
    used_images = models.BigIntegerField(default=0)
    limit_micro = models.BigIntegerField(null=True, blank=True)
    limit_images = models.BigIntegerField(null=True, blank=True)
    fired_at = models.DateTimeField()
    webhook_status = models.CharField(
        max_length=16, choices=Delivery.choices, default=Delivery.NONE
    )
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    webhook_last_error = models.CharField(max_length=300, blank=True)
    email_status = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.NONE)

    class Meta:
        ordering = ["-fired_at"]
        constraints = [
            # Each threshold fires once per period, however many requests cross it at once.
            models.UniqueConstraint(
                fields=["budget", "period_start", "threshold"], name="spend_alert_once"
            ),
        ]
        indexes = [
            # The management API and the admin: a workspace's alerts, newest first.
            models.Index(fields=["workspace", "-fired_at"], name="spend_alert_workspace"),
        ]

    def __str__(self) -> str:
        return f"{self.budget} crossed {self.threshold}% at {self.fired_at:%Y-%m-%d %H:%M}"


class HourlyUsage(models.Model):
    """Per hour, workspace, key, alias, provider and deployment aggregates for the dashboard
    and the operators' charts (written by a Celery task from the usage records)."""

    hour = models.DateTimeField(help_text="The hour's start (UTC).")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    alias = models.CharField(max_length=128, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    deployment_id = models.BigIntegerField(default=0, help_text="0: none (refused, passthrough).")
    requests = models.PositiveIntegerField(default=0)
    images = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    upstream_errors = models.PositiveIntegerField(
        default=0,
        help_text="Failed upstream calls to this deployment (5xx, timeout, unreachable, 429).",
    )
    cost_micro = models.BigIntegerField(default=0)
    total_ms = models.BigIntegerField(default=0, help_text="Sum of latencies (for means).")
    latency_buckets = models.JSONField(
        default=list,
        blank=True,
        help_text="Request counts per latency bucket (billing/rollups.py), which add up "
        "exactly over any range, so percentiles of days and months need no records.",
    )

    class Meta:
        ordering = ["-hour"]
        verbose_name_plural = "hourly usage"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "workspace", "team", "key", "alias", "provider", "deployment_id"],
                name="hourly_usage_unique",
            )
        ]
        indexes = [
            # The dashboard: every row of a time range, and of one workspace in it.
            models.Index(fields=["hour"], name="hourly_usage_hour"),
            models.Index(fields=["workspace", "hour"], name="hourly_usage_workspace"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.alias or '-'}: {self.requests} requests"
