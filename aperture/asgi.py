"""ASGI entry point (not the recommended serving model; see the README's architecture notes)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")

application = get_asgi_application()
