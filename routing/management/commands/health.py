"""`manage.py health`: every enabled deployment's circuit, as the admin lists it."""

import re
from typing import Any

from django.core.management.base import BaseCommand

from routing import health, health_report

_HEADER = ("ALIAS", "CREDENTIAL", "PROVIDER", "MODEL", "STATE", "FAILURES", "LAST ERROR")


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip() or "-"


class Command(BaseCommand):
    help = (
        "Print each enabled deployment's health: closed, open until …, or half-open; the "
        "failures in the current window and the last error."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = [
            (
                row.alias,
                row.credential,
                row.provider,
                row.model,
                row.health.label,
                str(row.health.failures),
                _one_line(row.health.last_error),
            )
            for row in health_report.table()
        ]
        widths = [max(len(line[i]) for line in [_HEADER, *rows]) for i in range(len(_HEADER))]
        for line in [_HEADER, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
            self.stdout.write("  ".join(cells).rstrip())
        if not rows:
            self.stdout.write("(no enabled deployment)")
        mode = health.mode()
        self.stdout.write(f"health mode: {mode}")
        if mode != "shared":  # this command's process holds its own state, not the gateway's
            self.stderr.write(
                "warning: without a reachable Redis each process keeps its own circuits; "
                "this table shows this command's process only, not the gateway's.",
                style_func=self.style.WARNING,
            )
