"""Operator admin for async image jobs: read-only (jobs change only by running, being
cancelled, or expiring), each with its webhook delivery attempts."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from aperture.api_fields import usd
from routing.models import ImageJob, JobDelivery


class _ReadOnlyInline(admin.TabularInline[JobDelivery, ImageJob]):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


_DELIVERY_FIELDS = (
    "attempt",
    "created_at",
    "status_code",
    "delivered",
    "error",
    "duration_ms",
    "url",
)
_JOB_FIELDS = (
    "public_id",
    "workspace",
    "key",
    "request_id",
    "endpoint",
    "model",
    "status",
    "error_status",
    "error_pretty",
    "cost",
    "result_name",
    "webhook_url",
    "webhook_status",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
)


class JobDeliveryInline(_ReadOnlyInline):
    model = JobDelivery
    fields = _DELIVERY_FIELDS
    readonly_fields = _DELIVERY_FIELDS
    ordering = ["attempt"]
    extra = 0
    verbose_name = "webhook delivery attempt"


@admin.register(ImageJob)
class ImageJobAdmin(admin.ModelAdmin[ImageJob]):
    list_display = [
        "public_id",
        "created_at",
        "workspace",
        "key",
        "endpoint",
        "model",
        "status",
        "webhook_status",
        "cost",
        "finished_at",
    ]
    list_filter = ["status", "webhook_status", "endpoint", "created_at", "workspace"]
    list_select_related = ["workspace", "key"]
    search_fields = ["public_id", "request_id", "key__public_id", "workspace__slug", "model"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over a big table on every page
    fields = _JOB_FIELDS
    readonly_fields = _JOB_FIELDS
    inlines = [JobDeliveryInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Cost (USD)", ordering="cost_micro")
    def cost(self, obj: ImageJob) -> str:
        return usd(obj.cost_micro)

    @admin.display(description="Error")
    def error_pretty(self, obj: ImageJob) -> SafeString | str:
        if obj.error is None:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(obj.error, indent=2, ensure_ascii=False))
