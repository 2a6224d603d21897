"""A tenant's end user (a request's `user`) as the gateway names it to anyone else: a keyed hash.

Upstream providers and the rate limiter's Redis keys see `end_user_id(workspace, user)`, never
the raw value: the same end user is the same id on every request and process of a workspace,
and a different id in another workspace. It is keyed with the key pepper, which must already
stay fixed (rotating it invalidates every API key); a label of its own keeps the two uses apart.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from django.conf import settings

ID_LENGTH = 32  # hex characters: 128 bits, within every provider's user-field limits


@lru_cache(maxsize=4)
def _key(pepper: str) -> bytes:
    return hmac.new(pepper.encode(), b"aperture:end-user:v1", hashlib.sha256).digest()


def end_user_id(workspace_id: int, user: str) -> str:
    """The stable, workspace-scoped stand-in for `user`."""
    message = f"{workspace_id}:{user}".encode()
    return hmac.new(_key(settings.KEY_PEPPER), message, hashlib.sha256).hexdigest()[:ID_LENGTH]
