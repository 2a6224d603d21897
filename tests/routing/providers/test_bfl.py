"""Black Forest Labs: submit, poll until ready, download; a synchronous answer to the SDK."""

import base64
import io

import openai
import pytest
from openai import OpenAI
from PIL import Image

from routing.providers.base import Target
from routing.providers.bfl import BFLProvider
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.providers.conftest import AliasMaker, the_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_polls_and_local_samples(settings) -> None:
    settings.UPSTREAM_POLL_INTERVAL_SECONDS = 0.01
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake hosts the signed samples


def test_pending_then_ready_comes_back_as_an_ordinary_response(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("bfl", "flux-pro-1.1", name="flux")
    fake_upstream.bfl_pending = 3
    result = sdk.images.generate(
        model="flux", prompt="a fox", size="1024x768", n=2, extra_body={"seed": 5}
    )
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))) for d in result.data or []]
    assert [(i.format, i.size) for i in images] == [("JPEG", (1024, 768))] * 2
    submits = [c for c in fake_upstream.requests if c.method == "POST"]
    polls = [c for c in fake_upstream.requests if c.method == "GET"]
    assert [c.path for c in submits] == ["/v1/flux-pro-1.1"] * 2
    assert sorted(c.body["seed"] for c in submits) == [5, 6]
    assert submits[0].body | {"seed": 0} == {
        "prompt": "a fox",
        "width": 1024,
        "height": 768,
        "seed": 0,
        "output_format": "jpeg",
    }
    assert len(polls) == 2 * 4  # three pending answers and the ready one, per task
    assert all(c.headers["x-key"] == UPSTREAM_SECRET for c in submits + polls)
    assert (the_record().images, the_record().cost_micro) == (2, 2 * 40_000)


def test_kontext_edits_by_aspect_ratio_with_the_input_image(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("bfl", "flux-kontext-pro", name="kontext")
    source = png(30, 20)
    sdk.images.edit(
        model="kontext", prompt="a hat", image=("a.png", source, "image/png"), size="1536x1024"
    )
    submit = fake_upstream.requests[0]
    assert submit.body["aspect_ratio"] == "3:2"
    assert submit.body["input_image"] == base64.b64encode(source).decode()


@pytest.mark.parametrize(
    ("outcome", "status", "code"),
    [
        ("Content Moderated", 400, "content_policy_violation"),
        ("Request Moderated", 400, "content_policy_violation"),
        ("Error", 502, "upstream_error"),
    ],
)
def test_moderated_and_failed_tasks_map_to_openai_errors(
    sdk: OpenAI,
    alias_on: AliasMaker,
    fake_upstream: FakeUpstream,
    outcome: str,
    status: int,
    code: str,
) -> None:
    alias_on("bfl", "flux-pro-1.1", name="flux")
    fake_upstream.bfl_outcome = outcome
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.images.generate(model="flux", prompt="x")
    assert (failed.value.status_code, failed.value.code) == (status, code)
    assert the_record().cost_micro == 0


def test_submit_errors_are_mapped(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("bfl", "flux-pro-1.1", name="flux")
    fake_upstream.misbehave(
        Misbehave(
            status=422,
            body={
                "detail": [
                    {
                        "loc": ["body", "width"],
                        "msg": "width must be a multiple of 32",
                        "type": "value_error",
                    }
                ]
            },
        ),
        Misbehave(status=429, body={"detail": "Too many active tasks"}),
        Misbehave(status=402, body={"detail": "Insufficient credits"}),
    )
    with pytest.raises(openai.BadRequestError) as invalid:
        sdk.images.generate(model="flux", prompt="x")
    assert "multiple of 32" in invalid.value.message
    with pytest.raises(openai.RateLimitError):
        sdk.images.generate(model="flux", prompt="x")
    with pytest.raises(openai.APIStatusError) as unpaid:
        sdk.images.generate(model="flux", prompt="x")
    assert unpaid.value.status_code == 502


def test_a_task_that_never_finishes_times_out_as_504(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on(
        "bfl",
        "flux-pro-1.1",
        name="flux",
    )
    from routing.models import Deployment

    Deployment.objects.update(timeout_seconds=1)
    fake_upstream.bfl_pending = 10_000
    with pytest.raises(openai.APIStatusError) as late:
        sdk.images.generate(model="flux", prompt="x")
    assert late.value.status_code == 504


def test_the_key_goes_only_to_bfl_hosts() -> None:
    target = Target(
        provider="bfl",
        credential_name="b",
        base_url="https://api.bfl.ai",
        secret="k",
        upstream_model="flux-pro-1.1",
        timeout_seconds=60,
    )
    adapter = BFLProvider()
    trusted = "https://api.eu1.bfl.ai/v1/get_result?id=1"
    assert adapter.polling_url({"id": "1", "polling_url": trusted}, target) == trusted
    for hostile in (
        "https://evil.example/v1/get_result?id=1",
        "http://api.eu1.bfl.ai/x",
        "https://bfl.ai.evil.example/x",
    ):
        assert adapter.polling_url({"id": "1", "polling_url": hostile}, target) == (
            "https://api.bfl.ai/v1/get_result?id=1"
        )


def test_polling_leaves_the_worker_free_for_other_requests(
    fake_upstream: FakeUpstream,
    api_key,
    alias_on: AliasMaker,
) -> None:
    """One gevent worker: while a task is polled, the same worker answers another call."""
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from django.conf import settings as django_settings

    from tests.support import gunicorn, subprocess_database_url, wait_for

    alias_on("bfl", "flux-pro-1.1", name="flux")
    fake_upstream.bfl_pending = 10_000  # polled until the test lets it finish
    env = {
        "DATABASE_URL": subprocess_database_url(),
        "REDIS_URL": django_settings.REDIS_URL,
        "APERTURE_UPSTREAM_POLL_INTERVAL_SECONDS": "0.05",
        "APERTURE_FETCH_ALLOWED_HOSTS": "127.0.0.1",
    }
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    with gunicorn(env, workers=1) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            requests.post,
            f"{server}/v1/images/generations",
            json={"model": "flux", "prompt": "a fox"},
            headers=headers,
            timeout=60,
        )
        polls = lambda: sum(c.method == "GET" for c in fake_upstream.requests)  # noqa: E731
        wait_for(lambda: polls() >= 2, what="the task being polled")
        other = requests.get(f"{server}/v1/models", headers=headers, timeout=10)
        assert other.status_code == 200
        assert not pending.done(), "the generation is still being polled meanwhile"
        for state in fake_upstream.bfl_tasks.values():
            state[0] = 0  # the task is ready at the next poll
        assert pending.result(timeout=30).status_code == 200
