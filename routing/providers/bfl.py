"""Black Forest Labs FLUX: an asynchronous upstream behind a synchronous answer.
docs/providers.md §8.

Submit `POST {root}/v1/{model}` (`x-key`), then poll the returned `polling_url` with a
growing interval until `Ready`, and download `result.sample` at once (a signed URL that
lives about ten minutes). Under gevent the waits are cooperative sleeps: no worker thread
is blocked, and the database connection was handed back before the upstream call. The
credential is only ever sent to the credential's own host or to `*.bfl.ai` / `*.bfl.ml`
(BFL polls from regional hosts); any other polling URL is replaced by `/v1/get_result`.
`Request Moderated` and `Content Moderated` are 400 `content_policy_violation`. FLUX.2
models take width/height and up to eight reference images (`input_image`, `input_image_2`, …);
their own options (`safety_tolerance`, [flex]'s `steps` and `guidance`) pass through from the
credential's or the caller's provider options.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from PIL import Image

from routing.providers import http
from routing.providers.auth import ProviderAuth, credential_headers
from routing.providers.base import (
    ErrorShape,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderAdapter,
    Target,
    UpstreamFailed,
    UpstreamModerated,
    UpstreamTimedOut,
)
from routing.providers.capabilities import ImageCapabilities, nearest_ratio
from routing.providers.fetch import fetch_image

# width/height models (FLUX1.1 [pro], [dev]): 256-1440 px, multiples of 32.
FLUX_SIZED = ImageCapabilities(
    sizes=None,
    min_side=256,
    max_side=1440,
    size_multiple=32,
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=("jpeg", "png"),
    seed=True,
    max_prompt_chars=10000,
)
# aspect-ratio models (Ultra, Kontext): the size's shape is sent as a ratio.
FLUX_RATIO = ImageCapabilities(**{**FLUX_SIZED.__dict__, "max_side": 4096, "size_multiple": 1})
FLUX_KONTEXT = ImageCapabilities(
    **{**FLUX_RATIO.__dict__, "edits": True, "mask": False, "max_edit_images": 1}
)
# FLUX.2 ([pro], [max], [flex], [klein] 4B/9B; docs/providers.md, updates of 2026-12-02):
# width/height from 64x64 to 4 MP (a megapixel is 10^6 pixels: BFL calls 1920x1080 2.07 MP);
# up to 8 reference images as input_image … input_image_8 (klein: 4). BFL works on a 16-px
# grid yet lists 1920x1080 among its sizes, so any size is taken and the nearest multiples
# of 16 are sent (1920x1080 → 1920x1088); the answer reports the size made.
FLUX_2_GRID = 16
FLUX_2 = ImageCapabilities(
    sizes=None,
    min_side=64,
    max_side=4096,
    max_pixels=4_000_000,
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=("jpeg", "png"),
    edits=True,
    mask=False,
    max_edit_images=8,
    seed=True,
    max_prompt_chars=32000,
)
FLUX_2_KLEIN = replace(FLUX_2, max_edit_images=4)
RATIOS = ("21:9", "16:9", "3:2", "4:3", "1:1", "3:4", "2:3", "9:16", "9:21")
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed", "Task not found"})
_TRUSTED_SUFFIXES = (".bfl.ai", ".bfl.ml")


def _by_ratio(model: str) -> bool:
    return "ultra" in model or "kontext" in model


def on_flux_2_grid(width: int, height: int) -> tuple[int, int]:
    """The nearest multiples of 16 (at least 64), the longer side shortened while over 4 MP."""
    w, h = (max(64, round(side / FLUX_2_GRID) * FLUX_2_GRID) for side in (width, height))
    while w * h > (FLUX_2.max_pixels or 0):
        if w >= h:
            w -= FLUX_2_GRID
        else:
            h -= FLUX_2_GRID
    return w, h


class BFLProvider(ProviderAdapter):
    name = "bfl"
    auth = ProviderAuth("x-key", default_base_url="https://api.bfl.ai")  # no free check call
    # Every submit is `POST /v1/{model}`; results are fetched later.
    uncounted_image_paths = (re.compile(r"/v1/(?!get_result).*"),)
    error_shape = ErrorShape(("detail",))  # FastAPI's `{"detail": ...}`

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        if upstream_model.startswith("flux-2"):
            return FLUX_2_KLEIN if "klein" in upstream_model else FLUX_2
        if "kontext" in upstream_model:
            return FLUX_KONTEXT
        return FLUX_RATIO if _by_ratio(upstream_model) else FLUX_SIZED

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        body: dict[str, Any] = {**target.merged_options(request), "prompt": request.prompt}
        if request.dimensions:
            width, height = request.dimensions
            if _by_ratio(target.upstream_model):
                body["aspect_ratio"] = nearest_ratio(width, height, RATIOS)
            elif target.upstream_model.startswith("flux-2"):
                body["width"], body["height"] = on_flux_2_grid(width, height)
            else:
                body["width"], body["height"] = width, height
        if request.seed is not None:
            body["seed"] = request.seed
        body["output_format"] = "png" if request.output_format in ("png", "webp") else "jpeg"
        for index, image in enumerate(request.images):  # Kontext takes one, FLUX.2 up to 8
            name = "input_image" if index == 0 else f"input_image_{index + 1}"
            body[name] = base64.b64encode(image.read()).decode()
        return body

    def _headers(self, target: Target) -> dict[str, str]:
        return {**target.extra_headers, **credential_headers(self.name, target.secret)}

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        deadline = time.monotonic() + target.timeout_seconds
        submitted = http.send(
            self.name,
            "POST",
            f"{target.base_url}/v1/{target.upstream_model}",
            timeout=target.timeout_seconds,
            connect_timeout=target.connect_timeout_seconds,
            guarded=target.guarded,
            headers=self._headers(target),
            json_body=self.body(request, target),
        )
        http.check_status(self.name, submitted)
        task = http.json_object(self.name, submitted)
        if not isinstance(task.get("id"), str):
            raise UpstreamFailed(self.name, "bfl accepted the task without an id.")
        sample = self._wait_for_sample(task, target, deadline)
        data, media_type = fetch_image(self.name, sample)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                size, image_format = f"{opened.width}x{opened.height}", opened.format or "JPEG"
        except (OSError, ValueError):
            raise UpstreamFailed(self.name, "bfl's result is not a readable image.") from None
        media = media_type or f"image/{image_format.lower()}"
        return ImageResult(
            images=[GeneratedImage(data=data, media_type=media)], metadata={"size": size}
        )

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self.generate(request, target)

    def polling_url(self, task: dict[str, Any], target: Target) -> str:
        """The task's polling URL if the credential may go there, else /v1/get_result."""
        offered = task.get("polling_url")
        if isinstance(offered, str):
            parts, own = urlsplit(offered), urlsplit(target.base_url)
            host = parts.hostname or ""
            same = (parts.scheme, host, parts.port) == (own.scheme, own.hostname, own.port)
            if same or (parts.scheme == "https" and host.endswith(_TRUSTED_SUFFIXES)):
                return offered
        return f"{target.base_url}/v1/get_result?{urlencode({'id': task['id']})}"

    def _wait_for_sample(self, task: dict[str, Any], target: Target, deadline: float) -> str:
        url = self.polling_url(task, target)
        interval = settings.UPSTREAM_POLL_INTERVAL_SECONDS
        while True:
            if time.monotonic() + interval > deadline:
                raise UpstreamTimedOut(self.name, f"bfl's task {task['id']} was not ready in time.")
            time.sleep(interval)  # cooperative under gevent
            interval = min(interval * 1.5, 1.5)
            polled = http.send(
                self.name,
                "GET",
                url,
                timeout=30,
                guarded=target.guarded,
                headers=self._headers(target),
            )
            http.check_status(self.name, polled)
            state = http.json_object(self.name, polled)
            status = str(state.get("status"))
            if status == "Ready":
                sample = (state.get("result") or {}).get("sample")
                if not isinstance(sample, str):
                    raise UpstreamFailed(self.name, "bfl's ready task has no sample.")
                return sample
            if status in MODERATED:
                raise UpstreamModerated(self.name, f"bfl refused the task ({status}).")
            if status in FAILED:
                raise UpstreamFailed(self.name, f"bfl's task failed ({status}).")
