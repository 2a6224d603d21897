"""`manage.py apply FILE.yaml`: upsert credentials, aliases and deployments from a file."""

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from routing.config_apply import apply, plan
from routing.config_file import ConfigError, parse_config
from routing.models import Deployment
from routing.selectors import unpriced_deployments, unpriced_description


class Command(BaseCommand):
    help = "Apply a gateway configuration file (see the README), idempotently."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the plan; change nothing."
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Delete credentials and aliases the file no longer names in the scopes it "
            "covers, and guardrail policies too when the file has a guardrails: section.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        try:
            spec = parse_config(path.read_text())
            changes = plan(spec, prune=options["prune"], actor=f"system:apply:{path.name}")
            if not options["dry_run"]:
                apply(changes)
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}") from None
        except ConfigError as exc:
            raise CommandError(f"{path}: {exc}") from None
        except ValidationError as exc:
            raise CommandError(f"{path}: {'; '.join(exc.messages)}") from None
        for change in changes:
            self.stdout.write(str(change))
        verb = "would change" if options["dry_run"] else "changed"
        self.stdout.write(f"{len(changes)} change(s); {verb}." if changes else "No changes.")
        if not options["dry_run"]:  # a dry run's warnings would describe the rows, not the file
            for deployment in unpriced_deployments():
                self.stderr.write(_unpriced_warning(deployment), style_func=self.style.WARNING)


def _unpriced_warning(deployment: Deployment) -> str:
    return (
        f"warning: {unpriced_description(deployment)} has no price and will be refused "
        "(model_not_priced); add a price for it, or mark the deployment or the credential "
        "free: true"
    )
