"""Signed webhooks, as Standard Webhooks specifies, shared by spend alerts
(billing/alert_delivery.py) and async image jobs (routing/jobs/webhooks.py): the URL check
made when a tenant sets one, and one signed, guarded POST attempt.

`webhook-id` stays the same on every retry of one message (a receiver drops a duplicate by
it), `webhook-timestamp` is the attempt's Unix time, and `webhook-signature` is `v1,` and the
base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the workspace's secret
(tenants/webhook_secrets.py). The URL is called through the private-address guard, without
following redirects, on a connection of its own that is cut off when the attempt's time is up
(however slowly the receiver trickles its answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import requests
from standardwebhooks.webhooks import Webhook

from aperture.db import release_connection
from aperture.outbound import (
    PrivateAddress,
    caused_by,
    deadline,
    fresh_guarded_session,
    public_url_problem,
)

URL_MAX_LENGTH = 2000
USER_AGENT = "Aperture-Webhooks/1"
NO_SIGNING_KEY = (
    "The workspace has no webhook signing secret yet: create one first "
    "(POST /api/v1/workspace/webhook-secret/rotate)."
)


def url_problem(url: str) -> str | None:
    """Why a tenant may not set `url` as a webhook, or None: https (plain http only for a
    host an operator allowlists), no user info or fragment (a query may carry the receiver's
    token), at most URL_MAX_LENGTH characters, on a host that resolves to public addresses
    unless allowlisted (APERTURE_FETCH_ALLOWED_HOSTS). Delivery checks the address again when
    it connects."""
    if len(url) > URL_MAX_LENGTH:
        return f"Must be at most {URL_MAX_LENGTH} characters."
    return public_url_problem(url, query_allowed=True)


def signed_headers(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": str(Webhook(secret).sign(msg_id, timestamp, body)),
    }


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: `error` is empty when it was delivered (a 2xx); `permanent`
    when trying again cannot help (the host resolves to a private address)."""

    status_code: int | None
    error: str
    permanent: bool
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return not self.error


def post_signed(
    url: str,
    *,
    secret: str,
    msg_id: str,
    timestamp: datetime,
    body: str,
    timeout: tuple[float, float],
) -> Attempt:
    """One signed POST of `body` to `url`, within the sum of `timeout` (connect, read). The
    caller's database connection is given back first (not held while the receiver answers),
    unless it is inside a transaction."""
    headers = signed_headers(secret, msg_id, timestamp, body)
    status_code: int | None = None
    permanent = False
    release_connection()
    started = time.monotonic()
    with fresh_guarded_session() as session, deadline(sum(timeout)) as limit:
        try:
            response = session.post(
                url,
                data=body.encode(),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                stream=True,  # the answer's body is never read
            )
            response.close()
            status_code = response.status_code
            error = "" if 200 <= status_code < 300 else f"HTTP {status_code}"
        except requests.RequestException as exc:
            permanent = caused_by(exc, PrivateAddress)
            if isinstance(exc, requests.Timeout):
                error = "Timed out."
            elif permanent:
                error = "The host resolves to a private address."
            else:
                error = f"Could not connect ({type(exc).__name__})."
        if limit.expired:  # cut off: an answer ended by the cut (its headers, say) is none
            status_code, error = None, "Timed out."
    duration_ms = int((time.monotonic() - started) * 1000)
    return Attempt(status_code, error, permanent, duration_ms)
