"""The README's first command: `make run` serves the embedded default with a seeded demo."""

import base64
import io
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support import ROOT, free_port, wait_for


def _read_lines(stream, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)


def test_make_run_serves_the_demo_and_prints_a_working_key(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "APERTURE_VAR_DIR": str(tmp_path), "PORT": str(port)}
    env.pop("PYTEST_XDIST_WORKER", None)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return process.poll() is not None

    try:
        wait_for(healthy, timeout=120, what="make run to serve /healthz")
        assert process.poll() is None, "".join(lines)
        output = "".join(lines)
        key = re.search(r"^API key: (apk_\S+)$", output, re.M)
        assert key, output
        assert re.search(r"^Operator login: .*/admin/ +user: admin +password: \S+", output, re.M)
        assert f"curl -s {base}/v1/images/generations" in output
        assert (tmp_path / "aperture.sqlite3").exists()
        models = requests.get(
            f"{base}/v1/models", headers={"Authorization": f"Bearer {key.group(1)}"}, timeout=5
        )
        assert models.status_code == 200
        assert [m["id"] for m in models.json()["data"]] == ["demo-image"]
        generated = requests.post(
            f"{base}/v1/images/generations",
            headers={"Authorization": f"Bearer {key.group(1)}"},
            data='{"model": "demo-image", "prompt": "a lighthouse at dusk", "size": "512x512"}',
            timeout=30,
        )
        assert generated.status_code == 200, generated.text
        png = base64.b64decode(generated.json()["data"][0]["b64_json"])
        assert Image.open(io.BytesIO(png)).size == (512, 512)
        assert png.startswith(b"\x89PNG")
        _an_async_job_runs_in_the_background(base, key.group(1))
        admin = requests.get(f"{base}/admin/login/", timeout=5)
        assert admin.status_code == 200
        css = re.search(r'href="(/static/admin/css/[^"]+)"', admin.text)
        assert css and requests.get(base + css.group(1), timeout=5).status_code == 200
        admin_key = re.search(r"^Admin key: (apk_\S+)$", output, re.M)
        assert admin_key, output
        _walk_through_the_management_api(base, admin_key.group(1))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()


def _an_async_job_runs_in_the_background(base: str, key: str) -> None:
    """No broker here: the web process runs the job in a background thread of its own."""
    headers = {"Authorization": f"Bearer {key}"}
    submitted = requests.post(
        f"{base}/v1/images/generations",
        headers={**headers, "Prefer": "respond-async"},
        json={"model": "demo-image", "prompt": "a lighthouse at dusk", "size": "512x512"},
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["status"] == "queued"
    location = submitted.headers["Location"]

    def ended() -> bool:
        return requests.get(location, headers=headers, timeout=5).json()["status"] not in (
            "queued",
            "running",
        )

    wait_for(ended, timeout=60, what="the job to end")
    job = requests.get(location, headers=headers, timeout=5).json()
    assert job["status"] == "succeeded", job
    png = base64.b64decode(job["result"]["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (512, 512)


def _walk_through_the_management_api(base: str, admin_key: str) -> None:
    """The issue's "done when": mint a teammate's key, cap its spend, see it, revoke it."""
    docs = requests.get(f"{base}/api/docs/", timeout=5)
    assert docs.status_code == 200
    bundle = re.search(r'src="(/static/drf_spectacular_sidecar/[^"]+bundle[^"]*\.js)"', docs.text)
    assert bundle and requests.get(base + bundle.group(1), timeout=5).status_code == 200
    assert requests.get(f"{base}/api/schema/", timeout=5).status_code == 200
    with requests.Session() as admin:  # closed at the end: no pooled socket left to the GC
        admin.headers["Authorization"] = f"Bearer {admin_key}"
        minted = admin.post(
            f"{base}/api/v1/keys", json={"name": "teammate", "scopes": ["images"]}, timeout=5
        )
        assert minted.status_code == 201, minted.text
        teammate = minted.json()
        capped = admin.post(
            f"{base}/api/v1/budgets",
            json={"key": teammate["id"], "period": "month", "limit_usd": "0.02"},
            timeout=5,
        )
        assert capped.status_code == 201, capped.text
        body = '{"model": "demo-image", "prompt": "a lighthouse", "size": "256x256"}'
        statuses = [
            requests.post(
                f"{base}/v1/images/generations",
                headers={"Authorization": f"Bearer {teammate['secret']}"},
                data=body,
                timeout=30,
            ).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 402]
        summary = admin.get(f"{base}/api/v1/usage/summary?group_by=key", timeout=5).json()
        spent = {row["group"]: row for row in summary["data"]}[teammate["id"]]
        assert (spent["requests"], spent["images"], spent["errors"], spent["cost_usd"]) == (
            3,
            2,
            1,
            "0.020000",
        )
        budget = {b["key"]: b for b in summary["budgets"]}[teammate["id"]]
        assert (budget["spent_usd"], budget["remaining_usd"]) == ("0.020000", "0.000000")
        revoked = admin.post(f"{base}/api/v1/keys/{teammate['id']}/revoke", timeout=5)
        assert revoked.json()["status"] == "revoked"
        refused = requests.get(
            f"{base}/v1/models",
            headers={"Authorization": f"Bearer {teammate['secret']}"},
            timeout=5,
        )
        assert refused.status_code == 401


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_the_same_key(tmp_path: Path, settings) -> None:
    import io

    from django.core.management import call_command

    from routing.models import Deployment, ModelAlias, ProviderCredential
    from tenants.models import ApiKey, Workspace
    from tests.support import client_for

    settings.VAR_DIR = tmp_path
    outputs = []
    for _ in range(2):
        out = io.StringIO()
        call_command("seed_demo", "--port", "9999", stdout=out)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    key = re.search(r"^API key: (apk_\S+)$", outputs[0], re.M)
    assert key
    admin_key = re.search(r"^Admin key: (apk_\S+)$", outputs[0], re.M)
    assert admin_key
    assert Workspace.objects.filter(slug="demo").count() == 1
    assert sorted(k.scopes for k in ApiKey.objects.all()) == [["images"], ["manage:workspace"]]
    assert client_for(admin_key.group(1)).get("/api/v1/workspace").json()["slug"] == "demo"
    assert client_for(admin_key.group(1)).get("/v1/models").status_code == 403
    assert ProviderCredential.objects.filter(name="local", workspace=None).count() == 1
    assert ModelAlias.objects.filter(name="demo-image", workspace=None).count() == 1
    assert Deployment.objects.count() == 1
    assert client_for(key.group(1)).get("/v1/models").status_code == 200
