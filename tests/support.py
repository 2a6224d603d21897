"""Helpers shared by tests: free ports, waiting for conditions, serving gunicorn."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds. Never a blind sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


class Server(str):
    """The base URL of a served gunicorn, with the path of its log and its master's pid."""

    log: Path
    access_log: Path
    pid: int

    @property
    def port(self) -> int:
        return int(self.rsplit(":", 1)[1])

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(child) for child in children]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def gunicorn_command(config: Path = ROOT / "gunicorn.conf.py") -> list[str]:
    """How the project's gunicorn is started (from ROOT)."""
    return [str(VENV_BIN / "gunicorn"), "-c", str(config), "aperture.wsgi"]


@contextlib.contextmanager
def gunicorn(
    env: dict[str, str],
    workers: int = 1,
    access_log: str = "/dev/null",
    config: Path = ROOT / "gunicorn.conf.py",
) -> Iterator[Server]:
    """Serve aperture.wsgi with the project's gunicorn.conf.py (or `config`); yields the base
    URL."""
    port = free_port()
    full_env = {
        **os.environ,
        **env,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "APERTURE_ACCESS_LOG": access_log,
    }
    log = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            gunicorn_command(config),
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )
    base = Server(f"http://127.0.0.1:{port}")
    base.log = log
    base.pid = process.pid
    base.access_log = Path(access_log)
    try:
        wait_for(lambda: process.poll() is not None or _answers(f"{base}/healthz"), what="gunicorn")
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited: {base.log_tail()}")
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.unlink(missing_ok=True)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def client_for(secret: str) -> APIClient:
    """A DRF test client presenting `secret` as a Bearer key."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def subprocess_database_url() -> str:
    """The URL of the database this test process uses (for servers started as subprocesses)."""
    from django.db import connection

    settings_dict = connection.settings_dict
    assert settings_dict["ENGINE"] == "django.db.backends.postgresql", (
        "this test needs PostgreSQL: run it through `make test` or set DATABASE_URL"
    )
    return (
        f"postgres://{settings_dict['USER']}@{settings_dict['HOST'] or '127.0.0.1'}:"
        f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    )
