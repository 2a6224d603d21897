"""Outgoing email (spend alerts): the configured backend, except that Django's console
backend (the embedded default) writes one line per email.

The console is the gateway's log: one line per event, one JSON object a line with
APERTURE_LOG_FORMAT=json. Django's console backend writes each email as a whole MIME message,
dozens of lines between the log's; here it writes one JSON object instead, with the number of
recipients and the subject (the alert itself is in the admin and the management API).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends import console
from django.core.mail.backends.base import BaseEmailBackend

DJANGO_CONSOLE = "django.core.mail.backends.console.EmailBackend"


class ConsoleEmailBackend(console.EmailBackend):
    """Django's console backend, one JSON line per email."""

    def write_message(self, message: EmailMessage) -> None:
        recipients = len(message.recipients())
        line = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
            "level": "INFO",
            "logger": __name__,
            "message": f"email to {recipients} recipient(s): {message.subject}",
            "recipients": recipients,
            "subject": message.subject,
        }
        self.stream.write(json.dumps(line) + "\n")


def connection() -> BaseEmailBackend:
    """The configured email backend; ConsoleEmailBackend in place of Django's console."""
    if settings.EMAIL_BACKEND == DJANGO_CONSOLE:
        return ConsoleEmailBackend()
    return get_connection()
