"""LiteLLM's proxy in front of the same fake upstream, for the throughput section's side-by-side
row: the version in bench/litellm-requirements.txt, from `.venv-litellm` (`make bench` makes
it), with as many uvicorn workers as the gateway has gunicorn workers, no database, loopback
only. Without that environment the row is left out and the section says so."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-litellm-bench"  # the proxy's own key, as a tenant's key is the gateway's
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
) -> Iterator[str | None]:
    """The proxy's URL once it answers (alias -> openai/model on the fake upstream); None if
    LiteLLM is not installed or did not come up (the reason is printed)."""
    if not LITELLM.exists():
        print(f"(LiteLLM row left out: {LITELLM} is missing; `make bench` installs it)")
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text(
            CONFIG.format(alias=alias, model=model, upstream=upstream_url, master_key=MASTER_KEY)
        )
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of its price list at start
            "LITELLM_LOG": "ERROR",
        }
        for name in ("DATABASE_URL", "REDIS_URL"):  # the gateway's, not for LiteLLM
            env.pop(name, None)
        command = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--num_workers", str(workers)]
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            yield url if _up(url, process) else None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _up(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/health/liveliness", timeout=1).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    print(f"(LiteLLM row left out: the proxy did not come up on {url})")
    return False
