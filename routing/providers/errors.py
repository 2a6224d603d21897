"""The gateway's answer to a failed upstream call: a ProviderError as the caller sees it."""

from __future__ import annotations

from aperture.errors import (
    ApiError,
    Cancelled,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from routing.providers.base import (
    ProviderError,
    UpstreamAuthFailed,
    UpstreamCancelled,
    UpstreamModerated,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamRetired,
    UpstreamTimedOut,
)


def api_error_for(error: ProviderError) -> ApiError:
    if isinstance(error, UpstreamCancelled):
        return Cancelled("The job was cancelled while it ran; nothing was produced.")
    if isinstance(error, UpstreamModerated):
        return InvalidRequest(error.message, code="content_policy_violation")
    if isinstance(error, UpstreamRejected):
        return InvalidRequest(error.message, param=error.param, code="upstream_rejected")
    if isinstance(error, UpstreamAuthFailed):
        return UpstreamError(error.message, code="upstream_auth_failed")
    if isinstance(error, UpstreamRateLimited):
        headers = {"Retry-After": error.retry_after} if error.retry_after else {}
        return RateLimited(error.message, code="upstream_rate_limited", headers=headers)
    if isinstance(error, UpstreamTimedOut):
        return UpstreamTimeout(error.message)
    if isinstance(error, UpstreamRetired):
        return UpstreamError(error.message, code="model_retired")
    return UpstreamError(error.message)
