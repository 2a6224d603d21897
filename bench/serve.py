"""What several benchmark sections share: a gateway served by its own gunicorn master, and
the peak memory of a process tree while a load runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Served:
    url: str
    pid: int  # the gunicorn master's


@contextlib.contextmanager
def gunicorn(env: dict[str, str], port: int) -> Iterator[Served]:
    """aperture.wsgi under gunicorn.conf.py with `env` on `port`, once /healthz answers;
    its process group is stopped on the way out."""
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "aperture.wsgi"],
        cwd=ROOT,
        env={**env, "PORT": str(port)},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"the gateway on {url} did not come up") from None
                time.sleep(0.1)
        yield Served(url, process.pid)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in a session of its own, with its children: SIGTERM, then
    SIGKILL if it has not ended within 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class Peak:
    before: float = 0.0
    peak: float = 0.0


@contextlib.contextmanager
def peak_memory(sample: Callable[[], float]) -> Iterator[Peak]:
    """`sample()` (MB) before the block, and its highest value every 0.1 s during it."""
    memory = Peak(before=sample())
    memory.peak = memory.before
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            memory.peak = max(memory.peak, sample())
            time.sleep(0.1)

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    try:
        yield memory
    finally:
        stop.set()
        sampler.join()
