"""Replicate predictions, with `Prefer: wait` and polling as the fallback. docs/providers.md §9.1.

The deployment's model id is `owner/name` (an official model: `POST /v1/models/{owner}/
{name}/predictions`) or `owner/name:version` (`POST /v1/predictions` with the version).
`Prefer: wait` holds the call until the prediction is done (up to 60 s); one that is still
running is polled at its `urls.get` (only on the credential's own host, since the
credential goes with it) with a growing interval. Output URLs are downloaded at once.
Inputs vary per model; the common ones are set (`prompt`, `aspect_ratio`, `seed`,
`output_format`), the rest come from the credential's or the caller's provider options.
A prediction that failed for safety (its `error` says NSFW, flagged, sensitive, …) and an API
problem saying so are a 400 `content_policy_violation`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth, credential_headers
from routing.providers.base import (
    ErrorShape,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderAdapter,
    Target,
    UpstreamCancelled,
    UpstreamErrorBody,
    UpstreamFailed,
    UpstreamModerated,
    UpstreamTimedOut,
)
from routing.providers.capabilities import OUTPUT_FORMATS, ImageCapabilities, nearest_ratio
from routing.providers.fetch import fetch_image

REPLICATE = ImageCapabilities(
    sizes=None,
    min_side=256,
    max_side=2048,
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=OUTPUT_FORMATS,
    seed=True,
    max_prompt_chars=10000,
)
RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
DONE = frozenset({"succeeded", "failed", "canceled"})
# How a model's safety checker words its refusal in a failed prediction's free-text `error`
# ("NSFW content detected", "flagged as sensitive", …): Replicate has no code for it.
_SAFETY_WORDS = re.compile(
    r"\bnsfw\b|\bflagged\b|sensitive content|safety (?:check|filter|system)"
    r"|content (?:moderation|policy)|\bmoderated\b",
    re.IGNORECASE,
)


class ReplicateProvider(ProviderAdapter):
    name = "replicate"
    auth = ProviderAuth("Authorization", BEARER, "https://api.replicate.com")
    uncounted_image_paths = (
        re.compile(r"/v1/predictions"),
        re.compile(r"/v1/(?:models|deployments)/.*/predictions"),
    )
    check_path = "/v1/account"
    cancels_running = True  # a prediction being polled is cancelled when the caller asks
    # RFC 7807 problem details `{type, title, status, detail, instance}` (docs/providers.md,
    # updates of 2026-12-02): the detail says what, the title is the kind.
    error_shape = ErrorShape(("detail",), ("title",))
    moderation_statuses = frozenset({400, 422})

    @classmethod
    def is_moderation(cls, status: int, error: UpstreamErrorBody) -> bool:
        """A problem whose title or detail is a safety refusal (no code is documented), or a
        proxy's OpenAI-style refusal."""
        return super().is_moderation(status, error) or (
            status in cls.moderation_statuses
            and any(_SAFETY_WORDS.search(text) for text in (error.code, error.message))
        )

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        return REPLICATE

    def create_url_and_body(
        self, request: ImageRequest, target: Target
    ) -> tuple[str, dict[str, Any]]:
        inputs: dict[str, Any] = {"prompt": request.prompt}
        if request.dimensions:
            inputs["aspect_ratio"] = nearest_ratio(*request.dimensions, RATIOS)
        if request.seed is not None:
            inputs["seed"] = request.seed
        if request.output_format:
            inputs["output_format"] = (
                "jpg" if request.output_format == "jpeg" else request.output_format
            )
        inputs.update(target.merged_options(request))
        model, _, version = target.upstream_model.partition(":")
        if version:
            return f"{target.base_url}/v1/predictions", {"version": version, "input": inputs}
        return f"{target.base_url}/v1/models/{model}/predictions", {"input": inputs}

    def _headers(self, target: Target) -> dict[str, str]:
        return {**target.extra_headers, **credential_headers(self.name, target.secret)}

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        deadline = time.monotonic() + target.timeout_seconds
        url, body = self.create_url_and_body(request, target)
        wait = max(1, min(60, int(target.timeout_seconds)))
        created = http.send(
            self.name,
            "POST",
            url,
            timeout=target.timeout_seconds,
            connect_timeout=target.connect_timeout_seconds,
            guarded=target.guarded,
            headers={**self._headers(target), "Prefer": f"wait={wait}"},
            json_body=body,
        )
        http.check_status(self.name, created)
        prediction = http.json_object(self.name, created)
        prediction = self._until_done(prediction, request, target, deadline)
        return self._result(prediction)

    def poll_url(self, prediction: dict[str, Any], target: Target) -> str:
        offered = (prediction.get("urls") or {}).get("get")
        own = urlsplit(target.base_url)
        if isinstance(offered, str):
            parts = urlsplit(offered)
            if (parts.scheme, parts.hostname, parts.port) == (own.scheme, own.hostname, own.port):
                return offered
        return f"{target.base_url}/v1/predictions/{prediction.get('id')}"

    def _until_done(
        self, prediction: dict[str, Any], request: ImageRequest, target: Target, deadline: float
    ) -> dict[str, Any]:
        interval = settings.UPSTREAM_POLL_INTERVAL_SECONDS
        while prediction.get("status") not in DONE:
            if not isinstance(prediction.get("id"), str):
                raise UpstreamFailed(self.name, "replicate returned a prediction without an id.")
            if request.stop_requested is not None and request.stop_requested():
                self._cancel(prediction, target)
                raise UpstreamCancelled(self.name, "The prediction was cancelled while it ran.")
            if time.monotonic() + interval > deadline:
                raise UpstreamTimedOut(self.name, "replicate's prediction was not done in time.")
            time.sleep(interval)  # cooperative under gevent
            interval = min(interval * 1.5, 1.5)
            polled = http.send(
                self.name,
                "GET",
                self.poll_url(prediction, target),
                timeout=30,
                guarded=target.guarded,
                headers=self._headers(target),
            )
            http.check_status(self.name, polled)
            prediction = http.json_object(self.name, polled)
        return prediction

    def _cancel(self, prediction: dict[str, Any], target: Target) -> None:
        """Tell Replicate to stop the prediction (`POST /v1/predictions/{id}/cancel`, on the
        credential's own host): it stops billing its compute time then."""
        url = f"{target.base_url}/v1/predictions/{quote(prediction['id'], safe='')}/cancel"
        answer = http.send(
            self.name,
            "POST",
            url,
            timeout=30,
            guarded=target.guarded,
            headers=self._headers(target),
        )
        http.check_status(self.name, answer)

    def _result(self, prediction: dict[str, Any]) -> ImageResult:
        status = prediction.get("status")
        if status != "succeeded":
            error = str(prediction.get("error") or status)
            if _SAFETY_WORDS.search(error):
                raise UpstreamModerated(self.name, f"replicate refused: {error}")
            raise UpstreamFailed(self.name, f"replicate's prediction {status}: {error}")
        output = prediction.get("output")
        urls = [output] if isinstance(output, str) else output if isinstance(output, list) else []
        images = []
        for url in urls:
            if isinstance(url, str) and url:
                data, media_type = fetch_image(self.name, url)  # the links do not last
                images.append(GeneratedImage(data=data, media_type=media_type))
        if not images:
            raise UpstreamFailed(self.name, "replicate's prediction has no output.")
        return ImageResult(images=images)
