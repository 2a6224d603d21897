"""Django's and WhiteNoise's middleware for browser pages (static files, sessions, sign-in,
messages), each skipped on the inference API's paths (aperture/middleware.py `ForBrowsers`).
Subclasses, so that the admin's checks still find the middleware they name. CSRF and framing
are not among them: `check --deploy` looks for those by their own names, and they cost
little."""

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware

from aperture.middleware import ForBrowsers


class StaticFiles(ForBrowsers, WhiteNoiseMiddleware):  # type: ignore[misc]  # untyped
    pass


class Sessions(ForBrowsers, SessionMiddleware):
    pass


class Authentication(ForBrowsers, AuthenticationMiddleware):
    pass


class Messages(ForBrowsers, MessageMiddleware):
    pass
