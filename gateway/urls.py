"""The root URLconf (ROOT_URLCONF). Gateway routes come before the API catch-all that answers
404 envelopes. It imports every app, so it lives above them all, outside `aperture/`."""

from django.contrib import admin
from django.urls import include, path, re_path

from aperture import errors
from gateway import health
from gateway.dashboard import views as dashboard
from gateway.metrics_view import metrics_view
from routing.passthrough_api import PassthroughView

admin.site.site_header = "Aperture operator admin"
admin.site.site_title = "Aperture"
admin.site.index_title = "Gateway configuration"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    # The admin's landing page is the dashboard (the admin's own index view, given it).
    path("admin/", admin.site.admin_view(dashboard.index), name="dashboard"),
    path("admin/", admin.site.urls),
    path("", include("routing.urls")),
    path("", include("gateway.api_urls")),
    # Unknown routes under the gateway's own prefixes answer in the OpenAI error envelope.
    re_path(r"^(?:v1|api|openai/deployments)(?:/.*)?$", errors.not_found_view),
    # Everything else names a provider credential: /{provider}/{native path}.
    re_path(
        r"^(?P<provider>[A-Za-z0-9][A-Za-z0-9_-]*)(?P<path>/.*)?$",
        PassthroughView.as_view(),
        name="passthrough",
    ),
]

handler400 = "aperture.errors.bad_request_view"
handler404 = "aperture.errors.not_found_view"
handler500 = "aperture.errors.server_error_view"
