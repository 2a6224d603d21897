"""Which headers cross the gateway on a passthrough call, each way.

Going up: the caller's headers, less hop-by-hop ones, less anything that carried the
caller's gateway key, the gateway's own cookies or where the caller is (forwarding headers),
plus the credential's extra headers and the provider's credential in its own scheme.
Coming back: the upstream's headers, less hop-by-hop ones, cookies and CORS grants: the
answer is served on the gateway's origin, where the upstream has no say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# RFC 9110 §7.6.1 connection-specific fields, plus Expect (the gateway answers 100-continue).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Where callers put their gateway key (one header per client family).
CALLER_KEY_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})
# Set by the HTTP client for the upstream, private to the gateway, or where the caller is.
NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "via",
        # The gateway keeps that promise itself (routing/idempotency.py), per gateway key; an
        # upstream would hold it per credential, which many workspaces may share.
        "idempotency-key",
    }
)
# Never from an upstream to a caller on the gateway's origin: cookies, and what would bind
# the origin's browser state (HSTS, Clear-Site-Data, Alt-Svc).
NOT_RETURNED = frozenset(
    {"set-cookie", "set-cookie2", "strict-transport-security", "clear-site-data", "alt-svc"}
)


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Headers named in Connection are hop-by-hop too."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def caller_headers(meta: Mapping[str, object]) -> list[tuple[str, str]]:
    """The request's headers from a WSGI environ, with their HTTP names."""
    headers = []
    for key, value in meta.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").title()
        else:
            continue
        if isinstance(value, str) and value != "":
            headers.append((name, value))
    return headers


def upstream_request_headers(
    incoming: list[tuple[str, str]], *, injected: Mapping[str, str]
) -> dict[str, str]:
    """What the upstream receives: the caller's headers, cleaned, then the credential's."""
    dropped = HOP_BY_HOP | CALLER_KEY_HEADERS | NOT_FORWARDED | _connection_tokens(incoming)
    dropped |= {name.lower() for name in injected}
    headers = {name: value for name, value in incoming if name.lower() not in dropped}
    headers.update(injected)
    return headers


def caller_response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """What the caller receives of the upstream's headers."""
    pairs = list(upstream)
    dropped = HOP_BY_HOP | NOT_RETURNED | _connection_tokens(pairs)
    return [
        (name, value)
        for name, value in pairs
        if name.lower() not in dropped and not name.lower().startswith("access-control-")
    ]
