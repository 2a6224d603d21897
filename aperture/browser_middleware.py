"""Django's and WhiteNoise's middleware for browser pages (static files, sessions, CSRF,
sign-in, messages, framing), each skipped on the inference API's paths (aperture/middleware.py
`ForBrowsers`). Subclasses, so that Django's checks still find the middleware they name."""

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware

from aperture.middleware import ForBrowsers


class StaticFiles(ForBrowsers, WhiteNoiseMiddleware):  # type: ignore[misc]  # untyped
    pass


class Sessions(ForBrowsers, SessionMiddleware):
    pass


class Csrf(ForBrowsers, CsrfViewMiddleware):
    pass


class Authentication(ForBrowsers, AuthenticationMiddleware):
    pass


class Messages(ForBrowsers, MessageMiddleware):
    pass


class FrameOptions(ForBrowsers, XFrameOptionsMiddleware):
    pass
