"""Seed the management benchmark: a workspace with keys, aliases and many usage records.

`python -m bench.seed_usage N` writes N usage records over the last 30 days (COPY, not the
ORM) and prints JSON: {"admin": a manage:workspace key, "records": N}.
"""

import json
import os
import random
import sys
from datetime import UTC, datetime, timedelta


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")
    import django

    django.setup()
    from django.db import connection

    from tenants import services

    total = int(sys.argv[1])
    actor = "system:bench"
    workspace = services.workspace_create(actor=actor, slug="bench-usage", name="Usage")
    teams = [
        services.team_create(actor=actor, workspace=workspace, slug=f"team{i}", name=f"T{i}")
        for i in range(4)
    ]
    keys = [
        services.key_create(actor=actor, team=teams[i % 4], name=f"app {i}").key for i in range(20)
    ]
    admin = services.key_create(
        actor=actor, team=teams[0], name="admin", scopes=["manage:workspace"]
    )
    aliases = ["image-prod", "image-fast", "image-hd", "demo-image"]
    now = datetime.now(UTC)
    rng = random.Random(7)
    columns = (
        "request_id, created_at, workspace_id, team_id, key_id, alias, provider, upstream_model, "
        "endpoint, status, error_code, images, size, quality, input_tokens, output_tokens, "
        "cost_micro, total_ms, upstream_ms, bytes_in, bytes_out, method, path"
    )
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: COPY
        with raw.copy(f"COPY billing_usagerecord ({columns}) FROM STDIN") as copy:
            for i in range(total):
                key = keys[i % len(keys)]
                failed = rng.random() < 0.05
                copy.write_row(
                    (
                        f"req_bench_{i}",
                        now - timedelta(seconds=rng.randrange(30 * 86400)),
                        workspace.pk,
                        key.team_id,
                        key.pk,
                        aliases[i % 4],
                        "openai",
                        "gpt-image-1.5",
                        "images.generations",
                        502 if failed else 200,
                        "upstream_error" if failed else "",
                        0 if failed else 1,
                        "1024x1024",
                        "medium",
                        12,
                        0 if failed else 1056,
                        0 if failed else 34_000,  # gpt-image-1.5, medium, 1024x1024
                        rng.randrange(800, 9000),
                        rng.randrange(700, 8800),
                        120,
                        0 if failed else 1_500_000,
                        "",
                        "",
                    )
                )
    print(json.dumps({"admin": admin.secret, "records": total}))


if __name__ == "__main__":
    main()
