"""The Celery application: Redis broker in production, eager tasks in the embedded default."""

import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")

app = Celery("aperture")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _log_as_configured(**kwargs: Any) -> None:
    """The worker and the beat log through settings.LOGGING, as the web processes do (one
    JSON object a line with APERTURE_LOG_FORMAT=json; LOG_LEVEL sets the level), instead of
    Celery replacing the root logger's handlers with its own plain-text format."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


setup_logging.connect(_log_as_configured)
