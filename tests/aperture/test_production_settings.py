"""Production refuses to start without its secrets from the environment."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT

SECRETS = ("SECRET_KEY", "APERTURE_ENCRYPTION_KEYS", "APERTURE_KEY_PEPPER")


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.endswith("_FILE")}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**base, "APERTURE_PRODUCTION": "true", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("missing", SECRETS)
def test_production_names_the_missing_secret_and_refuses_to_start(missing: str) -> None:
    env = {
        "SECRET_KEY": "x" * 50,
        "APERTURE_ENCRYPTION_KEYS": "aGVsbG8taGVsbG8taGVsbG8taGVsbG8taGVsbG8tMTI=",
        "APERTURE_KEY_PEPPER": "p" * 40,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
    }
    del env[missing]
    result = _check(env)
    assert result.returncode != 0
    assert f"{missing} is not set. Set {missing} (or {missing}_FILE)" in result.stderr


def test_production_starts_with_every_secret_from_the_environment() -> None:
    result = _check(
        {
            "SECRET_KEY": "x" * 50,
            "APERTURE_ENCRYPTION_KEYS": "aGVsbG8taGVsbG8taGVsbG8taGVsbG8taGVsbG8tMTI=",
            "APERTURE_KEY_PEPPER": "p" * 40,
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
        }
    )
    assert result.returncode == 0, result.stderr
