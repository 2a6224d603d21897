"""Seed the benchmark database: a tenant, a key, and an alias on the fake upstream."""

import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")
    django.setup()
    from routing import services as routing
    from tenants import services

    upstream = sys.argv[1]
    actor = "system:bench"
    workspace = services.workspace_create(actor=actor, slug="bench", name="Bench")
    team = services.team_create(actor=actor, workspace=workspace, slug="load", name="Load")
    created = services.key_create(actor=actor, team=team, name="bench")
    credential = routing.credential_create(
        actor=actor,
        name="fake",
        provider="openai",
        base_url=upstream,
        secret="sk-bench-upstream",  # noqa: S106 - the fake checks no key
    )
    alias = routing.alias_create(actor=actor, name="bench-image")
    routing.deployment_create(
        actor=actor,
        alias=alias,
        credential=credential,
        upstream_model="dall-e-2",
        timeout_seconds=60,
    )
    print(created.secret)


if __name__ == "__main__":
    main()
