"""Seed the benchmark database: a tenant, keys, budgets and an alias on the fake upstream.

Arguments: the fake upstream's URL, then optionally a hanging one's (alias bench-resilient)
and a 10-s one's (alias bench-slow).

Prints JSON: {"plain": key without budgets, "budgeted": key under three roomy nested budgets,
"race": key whose budget allows exactly RACE_IMAGES images}.
"""

import json
import os
import sys

import django

RACE_IMAGES = 250
# The benchmark's models: current ones (docs/providers.md, updates of 2026-12-02).
BENCH_MODEL = "gpt-image-1.5"  # priced per image at 1024x1024 low
STREAM_MODEL = "gpt-image-2.5-flare"


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")
    django.setup()
    from billing import pricing
    from billing.models import Budget
    from routing import services as routing
    from tenants import services

    upstream = sys.argv[1]
    actor = "system:bench"
    credential = routing.credential_create(
        actor=actor,
        name="fake",
        provider="openai",
        base_url=upstream,
        secret="sk-bench-upstream",  # noqa: S106 - the fake checks no key
        passthrough_enabled=True,  # /fake/{path} for the passthrough section
    )
    alias = routing.alias_create(actor=actor, name="bench-image")
    routing.deployment_create(
        actor=actor,
        alias=alias,
        credential=credential,
        upstream_model=BENCH_MODEL,
        timeout_seconds=60,
    )
    gpt = routing.alias_create(actor=actor, name="bench-gpt")
    routing.deployment_create(
        actor=actor,
        alias=gpt,
        credential=credential,
        upstream_model=STREAM_MODEL,
        timeout_seconds=120,
    )
    if len(sys.argv) > 2:  # a hanging upstream: the health section's first deployment
        hanging = routing.credential_create(
            actor=actor,
            name="hanging",
            provider="openai",
            base_url=sys.argv[2],
            secret="sk-bench-upstream",  # noqa: S106 - the fake checks no key
        )
        resilient = routing.alias_create(actor=actor, name="bench-resilient")
        resilient.retry_after_timeout = True
        resilient.save()
        for priority, used in enumerate((hanging, credential)):
            routing.deployment_create(
                actor=actor,
                alias=resilient,
                credential=used,
                upstream_model=BENCH_MODEL,
                priority=priority,
                timeout_seconds=2,
            )
    if len(sys.argv) > 3:  # a 10-s upstream of its own: the throughput section's burst
        slow = routing.credential_create(
            actor=actor,
            name="slow",
            provider="openai",
            base_url=sys.argv[3],
            secret="sk-bench-upstream",  # noqa: S106 - the fake checks no key
        )
        routing.deployment_create(
            actor=actor,
            alias=routing.alias_create(actor=actor, name="bench-slow"),
            credential=slow,
            upstream_model=BENCH_MODEL,
            timeout_seconds=120,
        )
    price = pricing.per_image_estimate("openai", BENCH_MODEL, "1024x1024", "low")
    keys: dict[str, str | int] = {}
    for name in ("plain", "budgeted", "race"):
        workspace = services.workspace_create(actor=actor, slug=f"bench-{name}", name=name)
        team = services.team_create(actor=actor, workspace=workspace, slug="load", name="Load")
        created = services.key_create(actor=actor, team=team, name=name)
        keys[name] = created.secret
        if name == "budgeted":
            for scope, target in (
                ("workspace", {}),
                ("team", {"team": team}),
                ("key", {"key": created.key}),
            ):
                Budget.objects.create(
                    workspace=workspace, scope=scope, period="month", limit_micro=10**15, **target
                )
        if name == "race":
            Budget.objects.create(
                workspace=workspace,
                scope="key",
                key=created.key,
                period="month",
                limit_micro=RACE_IMAGES * price,
            )
    keys["price_micro"] = price
    print(json.dumps(keys))


if __name__ == "__main__":
    main()
