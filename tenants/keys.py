"""API key secrets: shape, generation and the peppered hash that is all we store.

A secret looks like `apk_<public id>_<random>`: the public id (12 alphanumerics) finds the
row, the random part (43 alphanumerics, 256 bits) is the secret. Only
HMAC-SHA256(pepper, secret) is stored, and compared in constant time.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass

from django.conf import settings

from aperture.ids import random_alphanumeric

PUBLIC_ID_LENGTH = 12
RANDOM_LENGTH = 43  # 43 * log2(62) = 256.03 bits
MAX_KEY_LENGTH = 4 + PUBLIC_ID_LENGTH + 1 + RANDOM_LENGTH
_KEY_SHAPE = re.compile(
    rf"^apk_([A-Za-z0-9]{{{PUBLIC_ID_LENGTH}}})_([A-Za-z0-9]{{{RANDOM_LENGTH}}})$"
)


@dataclass(frozen=True)
class NewSecret:
    public_id: str
    secret: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hmac.new(settings.KEY_PEPPER.encode(), secret.encode(), hashlib.sha256).hexdigest()


def generate_secret(public_id: str | None = None) -> NewSecret:
    public_id = public_id or random_alphanumeric(PUBLIC_ID_LENGTH)
    secret = f"apk_{public_id}_{random_alphanumeric(RANDOM_LENGTH)}"
    return NewSecret(public_id=public_id, secret=secret, secret_hash=hash_secret(secret))


def parse_public_id(secret: str) -> str | None:
    """The public id of a well-shaped secret, or None for anything else."""
    if len(secret) != MAX_KEY_LENGTH:
        return None
    match = _KEY_SHAPE.match(secret)
    return match.group(1) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
