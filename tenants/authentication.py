"""DRF authentication by API key: `Authorization: Bearer <key>` or Azure's `api-key: <key>`."""

from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from aperture.errors import AuthenticationError
from tenants.key_auth import KeyPrincipal, authenticate_secret

# Anything longer than this is not one of our keys; refuse before doing any work on it.
_MAX_HEADER_LENGTH = 512


def presented_secret(request: Request) -> str | None:
    """The secret the caller presented, None if there is none, 401 if it is malformed."""
    authorization: str | None = request.META.get("HTTP_AUTHORIZATION")
    api_key: str | None = request.META.get("HTTP_API_KEY")
    if authorization is None and api_key is None:
        return None
    if authorization is not None:
        if len(authorization) > _MAX_HEADER_LENGTH:
            raise AuthenticationError("Malformed Authorization header.")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError(
                "Malformed Authorization header; expected 'Authorization: Bearer <key>'."
            )
        return credentials.strip()
    assert api_key is not None
    if len(api_key) > _MAX_HEADER_LENGTH or not api_key.strip():
        raise AuthenticationError("Malformed api-key header.")
    return api_key.strip()


class ApiKeyAuthentication(BaseAuthentication):
    def presented(self, request: Request) -> str | None:
        return presented_secret(request)

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, KeyPrincipal] | None:
        secret = self.presented(request)
        if secret is None:
            return None
        principal = authenticate_secret(secret)
        return principal, principal

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="aperture"'


# Native clients put their key where their provider wants it: Anthropic-style and Google
# clients use these headers, Google's REST examples the `key` query parameter.
_NATIVE_KEY_HEADERS = ("HTTP_X_API_KEY", "HTTP_X_GOOG_API_KEY")


def presented_native_secret(request: Request) -> str | None:
    """Like presented_secret, also reading the places native provider clients send keys."""
    secret = presented_secret(request)
    if secret is not None:
        return secret
    for header in _NATIVE_KEY_HEADERS:
        value = request.META.get(header)
        if value is not None:
            if len(value) > _MAX_HEADER_LENGTH or not value.strip():
                raise AuthenticationError("Malformed API key header.")
            return str(value).strip()
    in_query = request.query_params.get("key")
    if in_query is None:
        return None
    if len(in_query) > _MAX_HEADER_LENGTH or not in_query.strip():
        raise AuthenticationError("Malformed key query parameter.")
    return str(in_query).strip()


class NativeApiKeyAuthentication(ApiKeyAuthentication):
    """For passthrough routes: the gateway key wherever the provider's native client sends it."""

    def presented(self, request: Request) -> str | None:
        return presented_native_secret(request)
