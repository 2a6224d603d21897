"""Any saved or deleted alias, deployment, credential, guardrail, price or budget invalidates every
process's cached routes.

Signals rather than service calls, so that admin saves, inlines and the config file all
invalidate without each remembering to.
"""

from typing import Any

from django.db.models.signals import post_delete, post_save

from aperture import config_cache
from billing.models import Budget, Price
from routing.models import Deployment, GuardrailPolicy, ModelAlias, ProviderCredential


def _invalidate(sender: Any, **kwargs: Any) -> None:
    config_cache.invalidate()


def connect() -> None:
    for model in (ModelAlias, Deployment, ProviderCredential, GuardrailPolicy, Price, Budget):
        post_save.connect(_invalidate, sender=model, dispatch_uid=f"routes-{model.__name__}-save")
        post_delete.connect(_invalidate, sender=model, dispatch_uid=f"routes-{model.__name__}-del")
