"""PostgreSQL storage settings for the billing hot rows.

Every request updates its budgets' rows twice. With a low fillfactor each update stays a
HOT update on the row's own page and old versions are pruned as the page is next touched,
so the row does not drag a long version chain behind it; reservations churn (insert and
delete per request) and are vacuumed early. No effect on SQLite.
"""

from django.db import migrations

FORWARD = [
    "ALTER TABLE billing_budget SET (fillfactor = 10, autovacuum_vacuum_scale_factor = 0, "
    "autovacuum_vacuum_threshold = 200)",
    "ALTER TABLE billing_reservation SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, "
    "autovacuum_vacuum_threshold = 1000)",
]
BACKWARD = [
    "ALTER TABLE billing_budget RESET (fillfactor, autovacuum_vacuum_scale_factor, "
    "autovacuum_vacuum_threshold)",
    "ALTER TABLE billing_reservation RESET (fillfactor, autovacuum_vacuum_scale_factor, "
    "autovacuum_vacuum_threshold)",
]


def _run(statements: list[str]):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_seed_list_prices")]
    operations = [migrations.RunPython(_run(FORWARD), _run(BACKWARD))]
