from typing import Any
import pytest
from rest_framework.test import APIClient
from routing.models import ImageJob, ModelAlias
from billing.models import Reservation
from tenants import webhook_secrets
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream

ASYNC: dict[str, Any] = {"HTTP_PREFER": "respond-async"}
BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}

@pytest.mark.parametrize("url", ["https://93.184.215.14/hook?x=\u0000", "https://[93.184.215.14/hook", "https://[::1/", "https://93.184.215.14/\r\nX: y", "https://93.184.215.14:0/", "https://[::ffff:127.0.0.1]/", "https://[::ffff:7f00:1]/", "https://2130706433/", "https://0x7f.1/", "https://127.1/", "https://[::]/", "https://0.0.0.0/", "https://[64:ff9b::a00:1]/", "https://[2002:a00:1::]/", "https://93.184.215.14\\@127.0.0.1/", "https:///93.184.215.14/", "https://93.184.215.14#@127.0.0.1/", "https://93.184.215.14/" + "%" * 1990])
@pytest.mark.django_db
def test_probe_urls(client: APIClient, workspace, priced_alias: ModelAlias, fake_upstream: FakeUpstream, url) -> None:
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    r = client.post("/v1/images/generations", {**BODY, "webhook_url": url}, format="json", **ASYNC)
    print("URL", repr(url[:60]), r.status_code, r.content[:200], ImageJob.objects.count(), Reservation.objects.count())
    assert 0
