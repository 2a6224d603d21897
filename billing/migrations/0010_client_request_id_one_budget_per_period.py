"""The caller's own request id apart from the gateway's; one budget per target and period."""

from django.db import migrations, models
from django.db.models import Count


def refuse_duplicate_budgets(apps, schema_editor):
    """Name duplicates before the unique indexes would fail on them without saying which."""
    Budget = apps.get_model("billing", "Budget")
    clashes = []
    for scope, target in (("workspace", "workspace_id"), ("team", "team_id"), ("key", "key_id")):
        groups = (
            Budget.objects.filter(scope=scope)
            .values(target, "period")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
        )
        for group in groups:
            ids = Budget.objects.filter(
                scope=scope, period=group["period"], **{target: group[target]}
            ).values_list("public_id", flat=True)
            clashes.append(f"{scope} {group[target]} {group['period']}: {sorted(ids)}")
    if clashes:
        raise RuntimeError(
            "Some targets have more than one budget for the same period; keep one of each "
            "(delete the others in the admin) and migrate again:\n" + "\n".join(clashes)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0009_usage_attempts"),
        ("tenants", "0002_key_rotation"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="client_request_id",
            field=models.CharField(
                blank=True,
                default="",
                help_text="The caller's x-client-request-id or x-request-id, if it sent one.",
                max_length=128,
            ),
        ),
        migrations.RunPython(refuse_duplicate_budgets, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="budget",
            constraint=models.UniqueConstraint(
                condition=models.Q(("scope", "workspace")),
                fields=("workspace", "period"),
                name="budget_one_per_workspace_period",
                violation_error_message="This workspace already has a budget for this period.",
            ),
        ),
        migrations.AddConstraint(
            model_name="budget",
            constraint=models.UniqueConstraint(
                condition=models.Q(("scope", "team")),
                fields=("team", "period"),
                name="budget_one_per_team_period",
                violation_error_message="This team already has a budget for this period.",
            ),
        ),
        migrations.AddConstraint(
            model_name="budget",
            constraint=models.UniqueConstraint(
                condition=models.Q(("scope", "key")),
                fields=("key", "period"),
                name="budget_one_per_key_period",
                violation_error_message="This key already has a budget for this period.",
            ),
        ),
    ]
