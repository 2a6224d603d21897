"""Secrets for the embedded default: generated on first run and kept under var/.

Production never reaches the secrets part: settings refuse to start without secrets from
the environment when APERTURE_PRODUCTION is set. var/ is its owner's alone: the directory
0700, the secrets and the SQLite database 0600 (`private_dir`, `private_file`).
"""

import base64
import contextlib
import os
import secrets
import stat
from pathlib import Path


def _tighten(path: Path, mode: int) -> None:
    """chmod `path` to `mode` if it allows more, and is ours (older versions left var/ 0755)."""
    info = path.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & ~mode:
        os.chmod(path, mode)


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner may enter: created 0700, or tightened to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """`path` as a file only its owner may read: created empty with 0600 (an empty file is an
    empty SQLite database), or tightened to it."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _tighten(path, 0o600)
    return path


def private_sqlite(path: Path) -> None:
    """The SQLite database and its companions 0600. SQLite creates its -wal, -shm and
    -journal files with the database's own mode, so only ones an older version left need it."""
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            _tighten(companion, 0o600)


def _generate(kind: str) -> str:
    if kind == "fernet":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_urlsafe(48)


def load_or_create(directory: Path, name: str, kind: str = "token") -> str:
    """Return the secret stored in `directory/name`, creating it atomically if absent.

    Several processes (gunicorn workers, xdist workers) may race here; the first link wins
    and everyone reads the winner's value. The file is 0600 from its first byte.
    """
    private_dir(directory)
    path = directory / name
    if not path.exists():
        tmp = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(_generate(kind))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    _tighten(path, 0o600)
    return path.read_text().strip()
