"""Budgets get a public id for the management API (existing rows get a random one)."""

from django.db import migrations, models

import aperture.ids


def fill_public_ids(apps, schema_editor):
    Budget = apps.get_model("billing", "Budget")
    for budget in Budget.objects.filter(public_id__isnull=True).only("id"):
        Budget.objects.filter(pk=budget.pk).update(public_id=aperture.ids.public_id())


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_seed_zai_prices")]

    operations = [
        migrations.AddField(
            model_name="budget",
            name="public_id",
            field=models.CharField(max_length=32, null=True, editable=False),
        ),
        migrations.RunPython(fill_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="budget",
            name="public_id",
            field=models.CharField(
                default=aperture.ids.public_id, editable=False, max_length=32, unique=True
            ),
        ),
    ]
