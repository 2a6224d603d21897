"""Re-encrypt every provider secret and workspace webhook secret with the first key of
APERTURE_ENCRYPTION_KEYS.

Rotation: put the new key first (keep the old ones after it), run this, then drop the old keys.
"""

from typing import Any

from django.core.management.base import BaseCommand

from routing.services import credentials_reencrypt
from tenants.webhook_secrets import webhook_secrets_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every stored provider secret with the current (first) encryption key."

    def handle(self, *args: Any, **options: Any) -> None:
        count = credentials_reencrypt(actor="system:reencrypt_secrets")
        self.stdout.write(f"Re-encrypted {count} credential secret(s).")
        count = webhook_secrets_reencrypt(actor="system:reencrypt_secrets")
        self.stdout.write(f"Re-encrypted {count} workspace webhook secret(s).")
