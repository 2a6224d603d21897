"""The embedded default's var/: only its owner may read the database and the secrets."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SECRETS = ("SECRET_KEY", "APERTURE_ENCRYPTION_KEYS", "APERTURE_KEY_PEPPER")
# Opens the embedded SQLite database (WAL mode) as the first request of `make run` would, and
# prints the modes of what var/ holds while it is open (SQLite drops its -wal and -shm files
# when the last connection closes).
OPEN_THE_DATABASE = """
import json, stat
from pathlib import Path
from django.conf import settings
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT count(*) FROM sqlite_master")
var = Path(settings.VAR_DIR)
print(json.dumps({
    str(p.relative_to(var)): oct(stat.S_IMODE(p.stat().st_mode))
    for p in [var, *var.iterdir(), *(var / "secrets").iterdir()]
    if p.name not in ("static", "media")
}))
"""


def _start_embedded(var: Path) -> dict[str, str]:
    """The modes of var/ while the embedded default has its database open."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SECRETS and not k.endswith("_FILE") and k != "PYTEST_XDIST_WORKER"
    }
    env.update({"APERTURE_VAR_DIR": str(var), "DATABASE_URL": "", "REDIS_URL": ""})
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", OPEN_THE_DATABASE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),  # the usual umask: files 0644 unless told
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


EXPECTED = {
    ".": "0o700",
    "aperture.sqlite3": "0o600",
    "aperture.sqlite3-wal": "0o600",
    "aperture.sqlite3-shm": "0o600",
    "secrets": "0o700",
    "secrets/secret_key": "0o600",
    "secrets/aperture_encryption_keys": "0o600",
    "secrets/aperture_key_pepper": "0o600",
}


def test_var_is_created_0700_and_the_database_and_secrets_0600(tmp_path: Path) -> None:
    assert _start_embedded(tmp_path / "var") == EXPECTED


def test_a_var_left_readable_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    var = tmp_path / "var"
    _start_embedded(var)
    var.chmod(0o755)
    (var / "secrets").chmod(0o755)
    (var / "aperture.sqlite3").chmod(0o644)
    (var / "secrets" / "secret_key").chmod(0o644)
    assert _start_embedded(var) == EXPECTED
