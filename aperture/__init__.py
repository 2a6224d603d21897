"""Aperture: a multi-tenant, OpenAI-compatible gateway in front of image-generation providers."""

from aperture.celery import app as celery_app

__all__ = ["celery_app"]
