"""Encryption at rest for provider credentials: a rotatable list of Fernet keys.

The first key of APERTURE_ENCRYPTION_KEYS encrypts; every key decrypts. Re-encrypting with
the first key (`manage.py reencrypt_secrets`) lets an old key be retired.
"""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@lru_cache(maxsize=4)
def _cipher(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("APERTURE_ENCRYPTION_KEYS holds no key.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "APERTURE_ENCRYPTION_KEYS must be comma-separated Fernet keys "
            "(32 url-safe base64-encoded bytes each)."
        ) from exc


def cipher() -> MultiFernet:
    return _cipher(tuple(settings.ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return cipher().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return cipher().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with any key in APERTURE_ENCRYPTION_KEYS."
        ) from exc


def reencrypt(token: str) -> str:
    """The same plaintext, encrypted with the first (current) key."""
    return cipher().rotate(token.encode()).decode()
