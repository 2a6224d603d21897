"""APERTURE_LOG_FORMAT=json: every line a live gateway writes is one JSON object; each
inference request has its own, with who, what and what it cost, and no secret or prompt."""

import json

import pytest
import requests
from django.conf import settings

from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.support import gunicorn, subprocess_database_url, wait_for

PROMPT = "a lighthouse painted by a very particular person"


@pytest.mark.django_db(transaction=True)
def test_json_logs_parse_line_by_line_and_carry_no_secret(
    api_key: CreatedKey, platform_alias: ModelAlias, tmp_path
) -> None:
    access_log = tmp_path / "access.log"
    env = {
        "DATABASE_URL": subprocess_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "APERTURE_LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    with gunicorn(env, access_log=str(access_log)) as server:
        auth = {"Authorization": f"Bearer {api_key.secret}"}
        served = requests.post(
            f"{server}/v1/images/generations",
            json={"model": "demo-image", "prompt": PROMPT, "size": "64x64"},
            headers=auth,
            timeout=30,
        )
        refused = requests.post(
            f"{server}/v1/images/generations",
            json={"model": "no-such-model", "prompt": PROMPT},
            headers=auth,
            timeout=30,
        )
        assert (served.status_code, refused.status_code) == (200, 404)

        def request_lines() -> list[dict]:
            lines = [json.loads(line) for line in server.log.read_text().splitlines() if line]
            return [line for line in lines if line["logger"] == "aperture.requests"]

        wait_for(lambda: len(request_lines()) == 2, what="two request log lines")
        log_text = server.log.read_text() + access_log.read_text()

    every_line = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(every_line[0])
    assert any(line["logger"] == "gunicorn.access" for line in every_line)
    ok, missing = request_lines_of(every_line)
    assert ok["request_id"] == served.headers["x-request-id"]
    assert {k: ok[k] for k in ("workspace_id", "key", "alias", "provider", "status")} == {
        "workspace_id": api_key.key.workspace_id,
        "key": api_key.key.public_id,
        "alias": "demo-image",
        "provider": "local",
        "status": 200,
    }
    assert (ok["images"], ok["cost_usd"], ok["level"]) == (1, "0.000000", "INFO")
    assert isinstance(ok["latency_ms"], int)
    assert (missing["status"], missing["error_code"]) == (404, "model_not_found")
    assert api_key.secret not in log_text
    assert PROMPT not in log_text


def request_lines_of(lines: list[dict]) -> tuple[dict, dict]:
    requests_ = [line for line in lines if line["logger"] == "aperture.requests"]
    ok = next(line for line in requests_ if line["status"] == 200)
    missing = next(line for line in requests_ if line["status"] == 404)
    return ok, missing
