"""Input images cost memory when decoded: their pixels are capped from the header alone, and
decodes run a few at a time per process, so a burst of large edits waits its turn instead of
multiplying the worker's memory (and the memory goes back after the burst)."""

import base64
import io
import json
import struct
import threading
import time
import zlib

import pytest
import requests
from PIL import Image
from rest_framework.test import APIClient

from aperture import offload
from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.fakes.upstream import FakeUpstream, png
from tests.support import Server, rss_bytes, wait_for

EDIT = "/v1/images/edits"


def _upload(name: str, data: bytes) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with image data that does not decode: only
    a reader that stops at the header can tell its size without failing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"not zlib at all")
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("param", ["image", "mask"])
def test_an_image_over_the_pixel_cap_is_refused_from_its_header_before_decoding(
    client: APIClient, platform_alias: ModelAlias, settings, param: str
) -> None:
    settings.MAX_INPUT_PIXELS = 100 * 100
    files = {"image": _upload("a.png", png(100, 100))}
    files[param] = _upload(f"{param}.png", _header_only_png(101, 100))
    response = client.post(
        EDIT, {"model": "demo-image", "prompt": "x", **files}, format="multipart"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"] == {
        "message": (
            f"'{param}' is 101x100 (10,100 pixels); input images may have at most 10,000 "
            "pixels (APERTURE_MAX_INPUT_PIXELS)."
        ),
        "type": "invalid_request_error",
        "param": param,
        "code": "image_too_large",
    }
    assert UsageRecord.objects.get().cost_micro == 0


def test_a_reference_image_over_the_pixel_cap_is_refused_too(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    settings,
) -> None:
    settings.MAX_INPUT_PIXELS = 64 * 64
    reference = "data:image/png;base64," + base64.b64encode(_header_only_png(65, 64)).decode()
    response = client.post(
        "/v1/images/generations",
        json.dumps(
            {
                "model": "image-openai",
                "prompt": "in this style",
                "size": "1024x1024",
                "input_references": [reference],
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "image_too_large"
    assert fake_upstream.requests == []


def test_an_image_at_the_cap_is_accepted(
    client: APIClient, platform_alias: ModelAlias, settings
) -> None:
    settings.MAX_INPUT_PIXELS = 100 * 100
    response = client.post(
        EDIT,
        {"model": "demo-image", "prompt": "x", "image": _upload("a.png", png(100, 100))},
        format="multipart",
    )
    assert response.status_code == 200, response.content


def test_the_default_cap_is_the_largest_input_a_provider_takes(settings) -> None:
    assert settings.MAX_INPUT_PIXELS == 4096 * 4096


def test_image_jobs_beyond_the_limit_wait_their_turn(settings, monkeypatch) -> None:
    settings.IMAGE_JOBS = 2
    monkeypatch.setattr(offload, "_jobs", None)  # made again, with the limit above
    running, most, lock = 0, 0, threading.Lock()
    release = threading.Event()

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1

    threads = [threading.Thread(target=offload.run_blocking, args=(job,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_for(
        lambda: (running, offload.waiting_jobs()) == (2, 4), what="two jobs running, four queued"
    )
    release.set()
    for thread in threads:
        thread.join()
    assert (most, running, offload.waiting_jobs()) == (2, 0, 0)


def _near_cap_png() -> bytes:
    """4000x4000 RGBA (16 Mpx, just under the 4096x4096 cap): a small file, 64 MB decoded."""
    image = Image.new("RGBA", (4000, 4000), (30, 120, 200, 255))
    image.paste((240, 200, 20, 255), (0, 0, 2000, 4000))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_near_cap_edits_keep_the_worker_under_500_mb_more(
    gateway: Server, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    source = _near_cap_png()
    auth = {"Authorization": f"Bearer {api_key.secret}"}

    def edit() -> requests.Response:
        return requests.post(
            f"{gateway}{EDIT}",
            data={"model": "demo-image", "prompt": "a hat", "size": "1024x1024"},
            files={"image": ("photo.png", source, "image/png")},
            headers=auth,
            timeout=120,
        )

    warm = edit()  # the first edit loads Pillow's plugins and the pools
    assert warm.status_code == 200, warm.text
    (worker,) = gateway.worker_pids()
    baseline = peak = rss_bytes(worker)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(worker))
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    answers: list[requests.Response] = []
    try:
        threads = [threading.Thread(target=lambda: answers.append(edit())) for _ in range(20)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
    finally:
        done.set()
        sampler.join()
    assert [answer.status_code for answer in answers] == [200] * 20
    grew = peak - baseline
    try:
        wait_for(
            lambda: rss_bytes(worker) - baseline < 100 * 2**20,
            timeout=10,
            what="the worker's memory to go back after the burst",
        )
    finally:
        print(
            f"20 near-cap edits in {seconds:.1f}s: worker RSS {baseline / 2**20:.0f} MB, "
            f"peak +{grew / 2**20:.0f} MB, after +{(rss_bytes(worker) - baseline) / 2**20:.0f} MB"
        )
    assert grew < 500 * 2**20, f"grew by {grew / 2**20:.0f} MB"
