"""Random, non-sequential public identifiers."""

import secrets
import string

ALPHANUMERIC = string.ascii_letters + string.digits


def random_alphanumeric(length: int) -> str:
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def public_id() -> str:
    """A 16-character public id (about 95 bits): used as a model's external identifier."""
    return random_alphanumeric(16)
