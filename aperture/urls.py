"""Top-level routes. Gateway routes come before the API catch-all that answers 404 envelopes."""

from django.contrib import admin
from django.urls import include, path, re_path

from aperture import errors, health

admin.site.site_header = "Aperture operator admin"
admin.site.site_title = "Aperture"
admin.site.index_title = "Gateway configuration"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("", include("routing.urls")),
    # Unknown routes under the API prefixes answer in the OpenAI error envelope.
    re_path(r"^(?:v1|openai|api)(?:/.*)?$", errors.not_found_view),
]

handler404 = "aperture.errors.not_found_view"
handler500 = "aperture.errors.server_error_view"
