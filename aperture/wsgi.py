"""WSGI entry point, served by gunicorn with gevent workers (see gunicorn.conf.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")

application = get_wsgi_application()
