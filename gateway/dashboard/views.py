"""The admin's landing page: the dashboard for staff who may view usage
(`billing.view_hourlyusage`), the models in the navigation sidebar; others get Django's list
of models. `?range=24h|30d` picks the range, `?workspace=<id>` narrows every figure to one
workspace (the workspace's admin page links there)."""

import re
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone

from billing import rollups
from gateway.dashboard import page, selectors
from tenants.models import Workspace

PERMISSION = "billing.view_hourlyusage"
CATCH_UP_SECONDS = 300  # as often as the beat would roll up


def _workspace(request: HttpRequest) -> Workspace | None:
    raw = request.GET.get("workspace", "")
    if not raw:
        return None
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    valid = re.fullmatch(r"[0-9]{1,18}", raw)
    workspace = Workspace.objects.filter(pk=int(raw)).first() if valid else None
    if workspace is None:
        raise Http404("No such workspace.")
    return workspace


def index(request: HttpRequest) -> HttpResponse:
    extra: dict[str, Any] = {}
    if request.user.has_perm(PERMISSION):
        if settings.CELERY_TASK_ALWAYS_EAGER and not rollups.rolled_within(CATCH_UP_SECONDS):
            rollups.catch_up(timezone.now())  # no beat runs here (the embedded default)
        wanted = request.GET.get("range", "24h")
        range_: selectors.Range = "30d" if wanted == "30d" else "24h"
        data = selectors.dashboard(range_, timezone.now(), _workspace(request))
        extra["dashboard"] = page.context(data, selectors.workspace_choices())
        extra["title"] = "Dashboard"
    return admin.site.index(request, extra_context=extra)
