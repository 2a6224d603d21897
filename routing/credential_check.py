"""One cheap call that tells whether a credential works: a listing that costs nothing.

Used by the management API's credential test and by the probes of open circuits
(routing/probes.py). The answer is the provider's own verdict (its status and message),
never the secret: an upstream that echoes the key has it masked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aperture.errors import Unsupported
from routing.models import ProviderCredential
from routing.providers import http
from routing.providers.auth import base_url_for, credential_headers
from routing.providers.base import ProviderError
from routing.providers.registry import ADAPTERS

CHECK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    provider: str
    url: str
    status: int | None
    message: str
    latency_ms: int


def _masked(text: str, secret: str) -> str:
    return text.replace(secret, "••••") if secret else text


def has_check_call(provider: str) -> bool:
    """Whether a free call is known that tests a credential of this provider."""
    adapter = ADAPTERS.get(provider)
    return adapter is not None and adapter.check_path is not None


def check_credential(
    credential: ProviderCredential, *, timeout: float = CHECK_TIMEOUT_SECONDS
) -> CheckResult:
    """Call the provider once with this credential (the free, read-only call its adapter
    declares); never raises for the provider's answer."""
    provider = credential.provider
    adapter = ADAPTERS.get(provider)
    if adapter is None or adapter.check_path is None:
        raise Unsupported(
            f"No free call is known that tests a {provider} credential; the first request "
            "through it will tell.",
        )
    url = base_url_for(provider, credential.base_url) + adapter.check_path
    params = adapter.check_params(credential.api_version)
    secret = credential.secret()
    headers = {
        **{str(k): str(v) for k, v in (credential.extra_headers or {}).items()},
        **credential_headers(provider, secret),
    }
    started = time.monotonic()

    def result(ok: bool, status: int | None, message: str) -> CheckResult:
        return CheckResult(
            ok=ok,
            provider=provider,
            url=url,
            status=status,
            message=_masked(message, secret),
            latency_ms=int((time.monotonic() - started) * 1000),
        )

    try:
        # A workspace's base URL: connected through the private-address guard (as its
        # calls are); an operator's platform credential may name a private host.
        response = http.send(
            provider,
            "GET",
            url,
            timeout=timeout,
            headers=headers,
            params=params,
            guarded=credential.workspace_id is not None,
        )
    except ProviderError as unreachable:  # timed out, refused, or a private address
        return result(False, None, str(unreachable))
    with response:
        if 200 <= response.status_code < 300:
            return result(True, response.status_code, "The provider accepted the credential.")
        message = http.error_body(provider, response).message
        return result(False, response.status_code, f"{provider}: {message}")
