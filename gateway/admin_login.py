"""Admin sign-in throttling (django-axes): the page a locked-out operator sees, and the audit
row written when the lock falls."""

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from tenants.audit import audit_record


def record_lockout(
    sender: object, *, request: HttpRequest, username: str | None, ip_address: str | None, **_: Any
) -> None:
    """axes sends `user_locked_out` on every failure while locked; the audit row is written
    once, for the failure that locked the account."""
    failures = getattr(request, "axes_failures_since_start", None)
    if failures != settings.AXES_FAILURE_LIMIT:
        return
    audit_record(
        actor="system:axes",
        event="operator.login_locked",
        target=("auth.user", (username or "")[:64]),
        data={"username": username or "", "ip_address": ip_address or "", "failures": failures},
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    """axes' AXES_LOCKOUT_CALLABLE: a page in the admin's look saying what happened and for
    how long, without a form to keep guessing in."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    context = {
        **admin.site.each_context(request),
        "title": "Sign-in locked",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "minutes": minutes,
    }
    response = TemplateResponse(request, "admin/locked_out.html", context, status=429)
    response["Retry-After"] = str(minutes * 60)
    return response.render()
