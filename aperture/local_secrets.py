"""Secrets for the embedded default: generated on first run and kept under var/.

Production never reaches this module: settings refuse to start without secrets from the
environment when APERTURE_PRODUCTION is set.
"""

import base64
import os
import secrets
from pathlib import Path


def _generate(kind: str) -> str:
    if kind == "fernet":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_urlsafe(48)


def load_or_create(directory: Path, name: str, kind: str = "token") -> str:
    """Return the secret stored in `directory/name`, creating it atomically if absent.

    Several processes (gunicorn workers, xdist workers) may race here; the first link wins
    and everyone reads the winner's value.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if not path.exists():
        tmp = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.write_text(_generate(kind))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
