"""List prices for Z.AI / Zhipu image models (micro-USD per image), as editable defaults.

cogview-4: $0.01 per image on Z.AI's international platform (a public CogView-4 example's
stated cost; M). glm-image: not found, set like CogView-4 plus half (L, check the rate
card). cogview-3-flash: free on both platforms (Zhipu's model list; M)."""

from django.db import migrations

ROWS = [
    ("cogview-4*", 10_000),
    ("glm-image*", 15_000),
    ("cogview-3-flash", 0),
]


def seed(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for pattern, micro in ROWS:
        Price.objects.get_or_create(
            provider="zai",
            model_pattern=pattern,
            size="",
            quality="",
            defaults={"per_image_micro": micro},
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_upstream_cost")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
