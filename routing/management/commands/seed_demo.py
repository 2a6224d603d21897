"""Seed the embedded default's demo: an operator, a workspace, an images key, a
`manage:workspace` admin key and the local provider.

Idempotent: a second run reuses everything and prints the same key and login, which are
kept under var/ (the key's secret exists nowhere else; only its hash is in the database).
"""

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from billing import services as billing_services
from billing.models import Price
from routing import services as routing_services
from routing.models import Deployment, ModelAlias, Provider, ProviderCredential
from tenants import services
from tenants.keys import parse_public_id, secret_matches
from tenants.models import ApiKey, Team, Workspace

ACTOR = "system:seed_demo"
DEMO_ALIAS = "demo-image"
LOCAL_MODEL = "local-image"
DEMO_PRICE_MICRO = 10_000  # $0.01 an image


def _state_path() -> Path:
    return Path(settings.VAR_DIR) / "demo-credentials.json"


def _read_state() -> dict[str, str]:
    path = _state_path()
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(state: dict[str, str]) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    os.chmod(path, 0o600)


def _key_still_valid(secret: str | None) -> bool:
    public_id = parse_public_id(secret or "")
    if public_id is None:
        return False
    key = ApiKey.objects.filter(public_id=public_id, revoked_at__isnull=True).first()
    return key is not None and secret_matches(secret or "", key.secret_hash)


class Command(BaseCommand):
    help = "Create (or reuse) the demo tenant, key, operator login and local-provider alias."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        state = _read_state()
        password = self._operator(state)
        workspace = Workspace.objects.filter(slug="demo").first() or services.workspace_create(
            actor=ACTOR, slug="demo", name="Demo workspace"
        )
        team = Team.objects.filter(workspace=workspace, slug="default").first() or (
            services.team_create(actor=ACTOR, workspace=workspace, slug="default", name="Default")
        )
        self._local_alias()
        if not _key_still_valid(state.get("api_key")):
            created = services.key_create(actor=ACTOR, team=team, name="demo images key")
            state["api_key"] = created.secret
        if not _key_still_valid(state.get("admin_key")):
            created = services.key_create(
                actor=ACTOR,
                team=team,
                name="demo workspace admin key",
                scopes=[ApiKey.Scope.MANAGE_WORKSPACE],
            )
            state["admin_key"] = created.secret
        state["operator_username"] = "admin"
        state["operator_password"] = password
        _write_state(state)
        self._print(state, options["port"])

    def _operator(self, state: dict[str, str]) -> str:
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        password = state.get("operator_password")
        if user is None:
            password = password or secrets.token_urlsafe(12)
            user_model.objects.create_superuser("admin", "admin@localhost", password)
        elif not password or not user.check_password(password):
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])
        return password

    def _local_alias(self) -> None:
        credential = ProviderCredential.objects.filter(
            workspace__isnull=True, name="local"
        ).first() or routing_services.credential_create(
            actor=ACTOR, name="local", provider=Provider.LOCAL, secret=""
        )
        alias = ModelAlias.objects.filter(
            workspace__isnull=True, name=DEMO_ALIAS
        ).first() or routing_services.alias_create(
            actor=ACTOR, name=DEMO_ALIAS, description="Images rendered on this machine."
        )
        if not Deployment.objects.filter(alias=alias).exists():
            routing_services.deployment_create(
                actor=ACTOR, alias=alias, credential=credential, upstream_model=LOCAL_MODEL
            )
        # A demo price, so that budgets and usage in the demo show money moving.
        if not Price.objects.filter(provider=Provider.LOCAL, model_pattern=LOCAL_MODEL).exists():
            billing_services.price_set(
                actor=ACTOR,
                provider=Provider.LOCAL,
                model_pattern=LOCAL_MODEL,
                size="",
                quality="",
                amounts={"per_image_micro": DEMO_PRICE_MICRO},
            )

    def _print(self, state: dict[str, str], port: str) -> None:
        base = f"http://127.0.0.1:{port}"
        key = state["api_key"]
        body = json.dumps(
            {"model": DEMO_ALIAS, "prompt": "a lighthouse at dusk", "size": "512x512"}
        )
        save_png = (
            'python3 -c "import sys,json,base64; '
            "open('image.png','wb').write(base64.b64decode(json.load(sys.stdin)['data'][0]['b64_json']))\""
        )
        self.stdout.write(f"API key: {key}")
        self.stdout.write(f"Admin key: {state['admin_key']}")
        self.stdout.write(
            f"Operator login: {base}/admin/  user: {state['operator_username']}  "
            f"password: {state['operator_password']}"
        )
        self.stdout.write("Try it:")
        self.stdout.write(
            f"curl -s {base}/v1/images/generations -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{body}' | {save_png}"
        )
        self.stdout.write(
            f"Manage keys, budgets and usage: {base}/api/docs/ (authorize with the admin key)"
        )
