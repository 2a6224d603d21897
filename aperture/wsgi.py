"""WSGI entry point, served by gunicorn with gevent workers (see gunicorn.conf.py).

The URLs (and so every view) are imported here rather than on the first request, and then
the garbage collector is tuned for serving (aperture/garbage_collection.py).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")

application = get_wsgi_application()


def _loaded() -> None:
    from django.urls import get_resolver

    from aperture.garbage_collection import tune_for_serving

    get_resolver().url_patterns  # noqa: B018 - imports the URLconf and its views
    tune_for_serving()


_loaded()
