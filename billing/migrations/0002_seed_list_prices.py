"""List prices from shared/docs/providers.md §10 (micro-USD), as editable defaults."""

from django.db import migrations

SIZES_GPT = ("1024x1024", "1024x1536", "1536x1024")


def _gpt(model, low, medium, high, tokens=None):
    rows = []
    for quality, prices in (("low", low), ("medium", medium), ("high", high)):
        for size, price in zip(SIZES_GPT, prices, strict=True):
            rows.append({"model_pattern": model, "size": size, "quality": quality, "per_image_micro": price})
    if tokens:
        text_in, image_in, image_out = tokens
        rows.append(
            {
                "model_pattern": model,
                "text_input_per_mtok_micro": text_in,
                "image_input_per_mtok_micro": image_in,
                "image_output_per_mtok_micro": image_out,
            }
        )
    return rows


OPENAI = [
    *_gpt("gpt-image-1", (11_000, 16_000, 16_000), (42_000, 63_000, 63_000),
          (167_000, 250_000, 250_000), tokens=(5_000_000, 10_000_000, 40_000_000)),
    *_gpt("gpt-image-1-mini", (5_000, 6_000, 6_000), (11_000, 15_000, 15_000),
          (36_000, 52_000, 52_000), tokens=(2_000_000, 2_500_000, 8_000_000)),
    *_gpt("gpt-image-1.5", (9_000, 13_000, 13_000), (34_000, 50_000, 50_000),
          (133_000, 200_000, 200_000)),
    {"model_pattern": "dall-e-3", "size": "1024x1024", "quality": "standard", "per_image_micro": 40_000},
    {"model_pattern": "dall-e-3", "size": "1792x1024", "quality": "standard", "per_image_micro": 80_000},
    {"model_pattern": "dall-e-3", "size": "1024x1792", "quality": "standard", "per_image_micro": 80_000},
    {"model_pattern": "dall-e-3", "size": "1024x1024", "quality": "hd", "per_image_micro": 80_000},
    {"model_pattern": "dall-e-3", "size": "1792x1024", "quality": "hd", "per_image_micro": 120_000},
    {"model_pattern": "dall-e-3", "size": "1024x1792", "quality": "hd", "per_image_micro": 120_000},
    {"model_pattern": "dall-e-2", "size": "256x256", "per_image_micro": 16_000},
    {"model_pattern": "dall-e-2", "size": "512x512", "per_image_micro": 18_000},
    {"model_pattern": "dall-e-2", "size": "1024x1024", "per_image_micro": 20_000},
]

PRICES = {
    "local": [{"model_pattern": "*", "per_image_micro": 0}],
    "openai": OPENAI,
    "azure": OPENAI,
    "gemini": [
        {"model_pattern": "gemini-2.5-flash-image*", "per_image_micro": 39_000},
        {"model_pattern": "gemini-3-pro-image-preview*", "per_image_micro": 134_000},
        {"model_pattern": "gemini-3.1-flash-image-preview*", "per_image_micro": 67_000},
        {"model_pattern": "imagen-4.0-fast-generate*", "per_image_micro": 20_000},
        {"model_pattern": "imagen-4.0-generate*", "per_image_micro": 40_000},
        {"model_pattern": "imagen-4.0-ultra-generate*", "per_image_micro": 60_000},
        {"model_pattern": "imagen-3.0-generate-002", "per_image_micro": 30_000},
    ],
    "seedream": [
        {"model_pattern": "doubao-seedream-4-0*", "per_image_micro": 30_000},
        {"model_pattern": "doubao-seedream-4-5*", "per_image_micro": 40_000},
        {"model_pattern": "doubao-seedream-5-0*", "per_image_micro": 35_000},
    ],
    "bfl": [
        {"model_pattern": "flux-pro-1.1", "per_image_micro": 40_000},
        {"model_pattern": "flux-pro-1.1-ultra", "per_image_micro": 60_000},
        {"model_pattern": "flux-kontext-pro", "per_image_micro": 40_000},
        {"model_pattern": "flux-kontext-max", "per_image_micro": 80_000},
        {"model_pattern": "flux-pro-1.0-fill", "per_image_micro": 50_000},
    ],
    "stability": [
        {"model_pattern": "ultra", "per_image_micro": 80_000},
        {"model_pattern": "core", "per_image_micro": 30_000},
        {"model_pattern": "sd3.5-large", "per_image_micro": 65_000},
        {"model_pattern": "sd3.5-large-turbo", "per_image_micro": 40_000},
        {"model_pattern": "sd3.5-medium", "per_image_micro": 35_000},
    ],
    "xai": [
        {"model_pattern": "grok-imagine-image", "per_image_micro": 20_000},
        {"model_pattern": "grok-2-image*", "per_image_micro": 70_000},
    ],
}


def seed(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for provider, rows in PRICES.items():
        for row in rows:
            Price.objects.get_or_create(
                provider=provider,
                model_pattern=row["model_pattern"],
                size=row.get("size", ""),
                quality=row.get("quality", ""),
                defaults={k: v for k, v in row.items() if k not in ("model_pattern", "size", "quality")},
            )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
