"""The upstream URL of a passthrough call: the credential's root + the caller's path + query.

The host always comes from the credential, never from the request. The path is forwarded as
the caller wrote it (percent-encodings kept), after refusing what could walk out of the
credential's root or around its allowed prefixes: dot segments (also percent-encoded),
backslashes and control characters. The final URL is checked to still name the
credential's scheme, host and port.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from aperture.errors import InvalidRequest, PermissionError_

# Characters a path may carry unencoded (RFC 3986 pchar and "/"); "%" keeps encodings as sent.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
# Query parameters that carry the caller's gateway key (Google-style clients send ?key=).
CALLER_KEY_PARAMS = frozenset({"key"})


@dataclass(frozen=True)
class UpstreamPath:
    raw: str  # as the caller sent it, percent-encodings kept; starts with "/"
    decoded: str  # what prefixes and route recognition are matched against

    def allowed_by(self, prefixes: list[str]) -> bool:
        """No prefixes: every path. Else the path is a prefix or lies below one (by segment)."""
        if not prefixes:
            return True
        for prefix in prefixes:
            bare = prefix.rstrip("/")
            if not bare or self.decoded == bare or self.decoded.startswith(bare + "/"):
                return True
        return False


def parse_path(raw: str) -> UpstreamPath:
    """The caller's path below /{provider}; 400 for anything that could escape the root."""
    raw = "/" + raw.lstrip("/") if not raw.startswith("/") else raw
    raw = quote(raw, safe=_PATH_SAFE)  # a space or a non-ASCII byte is sent encoded
    try:
        decoded = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        raise InvalidRequest(
            "The passthrough path is not valid percent-encoded UTF-8.", code="invalid_path"
        ) from None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded) or "\\" in decoded:
        raise InvalidRequest(
            "The passthrough path may not contain control characters or backslashes.",
            code="invalid_path",
        )
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise InvalidRequest(
            "The passthrough path may not contain '.' or '..' segments.", code="invalid_path"
        )
    return UpstreamPath(raw=raw, decoded=decoded)


def check_allowed(path: UpstreamPath, prefixes: list[str], credential_name: str) -> None:
    if not path.allowed_by(prefixes):
        raise PermissionError_(
            f"The path {path.decoded} is not open for passthrough on '{credential_name}'; "
            f"allowed: {', '.join(prefixes)}.",
            code="passthrough_path_not_allowed",
        )


def forwarded_query(query_string: str) -> str:
    """The caller's query string as sent, less any parameter carrying the gateway key."""
    if not query_string:
        return ""
    kept = [
        part
        for part in query_string.split("&")
        if part and unquote_plus(part.split("=", 1)[0]) not in CALLER_KEY_PARAMS
    ]
    return "&".join(kept)


def upstream_url(base_url: str, path: UpstreamPath, query_string: str) -> str:
    """base_url + path (+ ?query), verified to still point at base_url's origin."""
    base = base_url.rstrip("/")
    url = base + path.raw
    query = forwarded_query(query_string)
    if query:
        url = f"{url}?{query}"
    target, origin = urlsplit(url), urlsplit(base)
    same_origin = (target.scheme, target.hostname, target.port) == (
        origin.scheme,
        origin.hostname,
        origin.port,
    )
    if not same_origin or not url.startswith(base + "/"):
        raise InvalidRequest("The passthrough path is not a path.", code="invalid_path")
    return url
