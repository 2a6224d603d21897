"""A workspace's webhook signing secret (Standard Webhooks: `whsec_` + base64 of 32 random
bytes). Encrypted at rest; the tenant sees it once, in the answer to the rotation that made it.
"""

import base64
import secrets

from django.db import transaction
from django.utils import timezone

from aperture import crypto
from tenants.audit import audit_record
from tenants.models import Workspace

PREFIX = "whsec_"


def generate() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_secret_of(workspace: Workspace) -> str | None:
    """The plaintext secret, or None if the workspace has none yet."""
    if not workspace.webhook_secret_ciphertext:
        return None
    return crypto.decrypt(workspace.webhook_secret_ciphertext)


@transaction.atomic
def webhook_secret_rotate(*, actor: str, workspace: Workspace) -> str:
    """A new secret replaces the old one at once (webhooks from now on are signed with it);
    returns it, the only time it is shown."""
    secret = generate()
    first = not workspace.webhook_secret_ciphertext
    workspace.webhook_secret_ciphertext = crypto.encrypt(secret)
    workspace.webhook_secret_rotated_at = timezone.now()
    workspace.save(
        update_fields=["webhook_secret_ciphertext", "webhook_secret_rotated_at", "updated_at"]
    )
    audit_record(
        actor=actor,
        event="workspace.webhook_secret_created" if first else "workspace.webhook_secret_rotated",
        target=workspace,
        workspace=workspace,
    )
    return secret


@transaction.atomic
def webhook_secrets_reencrypt(*, actor: str) -> int:
    """Re-encrypt every workspace's secret with the first encryption key (key rotation)."""
    count = 0
    for workspace in Workspace.objects.select_for_update().exclude(webhook_secret_ciphertext=""):
        workspace.webhook_secret_ciphertext = crypto.reencrypt(workspace.webhook_secret_ciphertext)
        workspace.save(update_fields=["webhook_secret_ciphertext"])
        count += 1
    if count:
        audit_record(
            actor=actor,
            event="workspace.webhook_secrets_reencrypted",
            target=("tenants.workspace", "*"),
            data={"count": count},
        )
    return count
