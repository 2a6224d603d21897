"""Helpers of the passthrough tests: an open credential on a fake upstream, the caller's
bearer header, the usage record once written, and the error envelope."""

import requests

from billing.models import UsageRecord
from routing import services as routing_services
from routing.models import Provider, ProviderCredential
from tenants.models import Workspace
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream
from tests.support import wait_for


def open_credential(
    fake: FakeUpstream,
    *,
    name: str = "openai",
    provider: str = Provider.OPENAI,
    prefixes: list[str] | None = None,
    workspace: Workspace | None = None,
    passthrough: bool = True,
    base_url: str | None = None,
    free: bool = False,
) -> ProviderCredential:
    return routing_services.credential_create(
        actor=ACTOR,
        name=name,
        provider=provider,
        base_url=base_url or fake.url,
        secret=UPSTREAM_SECRET,
        workspace=workspace,
        passthrough_enabled=passthrough,
        passthrough_path_prefixes=prefixes,
        free=free,
    )


def bearer(key: CreatedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


def the_record(**filters: object) -> UsageRecord:
    """The one usage record matching `filters`, once the server has written it (after the
    response)."""
    records = UsageRecord.objects.filter(**filters)
    wait_for(lambda: records.exists(), what="the usage record")
    (record,) = records
    return record


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code, error
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)
