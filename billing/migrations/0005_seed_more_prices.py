"""More list prices (micro-USD per image), as editable defaults: the providers added with the
provider-breadth issue. Sources as in shared/docs/providers.md §10; rows it marks L (low
confidence) or that come from elsewhere are commented so operators know to check them."""

from django.db import migrations

PRICES = {
    # OpenRouter passes the underlying model's price through (its usage.cost is the truth).
    "openrouter": [
        {"model_pattern": "google/gemini-2.5-flash-image*", "per_image_micro": 39_000},
        {"model_pattern": "google/gemini-3-pro-image-preview*", "per_image_micro": 134_000},
        {"model_pattern": "google/gemini-3.1-flash-image-preview*", "per_image_micro": 67_000},
        {"model_pattern": "openai/gpt-image-1", "per_image_micro": 42_000},  # medium 1024²
        {"model_pattern": "black-forest-labs/flux.2-pro", "per_image_micro": 30_000},
    ],
    "bfl": [
        {"model_pattern": "flux-2-pro", "per_image_micro": 30_000},  # from 1 MP; M
        {"model_pattern": "flux-dev", "per_image_micro": 25_000},  # L
        {"model_pattern": "flux-pro", "per_image_micro": 50_000},  # L
    ],
    "xai": [
        {"model_pattern": "grok-imagine-image-pro", "per_image_micro": 70_000},  # L
    ],
    # Replicate bills per model run; these are its public per-image prices for common image
    # models (not in docs/providers.md: L, check your account's rate card).
    "replicate": [
        {"model_pattern": "black-forest-labs/flux-schnell*", "per_image_micro": 3_000},
        {"model_pattern": "black-forest-labs/flux-dev*", "per_image_micro": 25_000},
        {"model_pattern": "black-forest-labs/flux-1.1-pro*", "per_image_micro": 40_000},
    ],
}


def seed(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for provider, rows in PRICES.items():
        for row in rows:
            Price.objects.get_or_create(
                provider=provider,
                model_pattern=row["model_pattern"],
                size="",
                quality="",
                defaults={"per_image_micro": row["per_image_micro"]},
            )


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_usage_passthrough_method_path")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
