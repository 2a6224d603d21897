"""LiteLLM's proxy on the fake upstream, the throughput section's comparator (from
`.venv-litellm`, which `make bench` makes): as many workers as the gateway, no database."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from bench.serve import stop_group

ROOT = Path(__file__).resolve().parent.parent
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
# What LiteLLM is given of the environment: no database, cache or provider settings of ours
# (its CLI builds a DATABASE_URL from DATABASE_HOST and the like).
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
CONFIG = """\
model_list:
  - model_name: {alias}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
general_settings:
  master_key: {master_key}
"""


@contextlib.contextmanager
def litellm_proxy(
    *, upstream_url: str, alias: str, model: str, port: int, workers: int
) -> Iterator[tuple[str, str] | None]:
    """The proxy's URL and key once it answers (alias -> openai/model on the fake upstream);
    None if it is not installed, its port is taken or it did not come up (printed why)."""
    if not LITELLM.exists():
        print(f"(LiteLLM row left out: {LITELLM} is missing; `make bench` installs it)")
        yield None
        return
    if _taken(port):
        print(f"(LiteLLM row left out: port {port} is taken)")
        yield None
        return
    key = f"sk-litellm-{secrets.token_hex(8)}"  # this run's: a stale proxy would refuse it
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text(
            CONFIG.format(alias=alias, model=model, upstream=upstream_url, master_key=key)
        )
        env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
        command = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--num_workers", str(workers)]
        try:
            process = subprocess.Popen(
                command,
                cwd=directory,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:  # e.g. its environment's interpreter is gone
            print(f"(LiteLLM row left out: {LITELLM} did not start: {error})")
            yield None
            return
        url = f"http://127.0.0.1:{port}"
        try:
            yield (url, key) if _up(url, process) else None
        finally:
            stop_group(process)


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _up(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/health/liveliness", timeout=1).ok:
                return process.poll() is None
        except requests.RequestException:
            pass
        time.sleep(0.5)
    print(f"(LiteLLM row left out: the proxy did not come up on {url})")
    return False
