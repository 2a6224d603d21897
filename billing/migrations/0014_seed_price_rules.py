"""Price rules of 2026 (docs/providers.md, "Updates confirmed 2026-12-02" and §10), as editable
defaults: FLUX.2 per megapixel, Gemini 3 image per resolution tier, token rates for
gpt-image-2.x and gpt-image-1.5, input-image surcharges (FLUX.2, Gemini 3 Pro, xAI edits).

A row is created where none exists; a row an earlier seed created is updated only while it
still holds that seed's figures (an operator's edit is kept). Every row says its source in
`note`, "unconfirmed" where no official source was read.
"""

from django.db import migrations

OPENAI_GPT2 = "H: OpenAI pricing as quoted (gpt-image-2, 2026-04-21); unconfirmed for 2.5/2.6"
GPT2_PER_IMAGE = (
    "unconfirmed: OpenAI calculator's 1024x1024 figure (gptimage.news); for holds and answers "
    "without usage (tokens settle)"
)
GPT2_CEILING = (
    "derived: the 1024x1024 figure scaled to 3840x2160; holds any other size (tokens settle)"
)
GPT15 = "M: docs/providers.md updates of 2026-12-02"
RETIRED = "retired by OpenAI in 2026 (docs/providers.md): kept for Azure and for history"
GEMINI_31 = "H: tokens per tier (747/1120/1680/2520, Google Cloud model page) x $60/M image out (M)"
GEMINI_31_INPUT = "unconfirmed: $0.00056 an input image (third-party calculator)"
GEMINI_3_PRO = "H: 1120 tokens at 1K and 2K, 2000 at 4K (Vertex model page) x $120/M image out (M)"
GEMINI_3_PRO_INPUT = "H: 560 tokens an input image (Vertex model page) x $2/M input (M)"
FLUX2 = (
    "H: BFL first MP + each further MP (skills/model-selection-guide); an input image at one "
    "per-MP price: exact for references up to 1 MP"
)
XAI = "H: $0.02 an image (docs.x.ai); M: edits bill the input image at $0.002 (ComfyUI xAI node)"

GPT2_SIZES = ("1024x1024", "1024x1536", "1536x1024")
GPT2_QUALITY = {"low": 6_000, "medium": 53_000, "high": 211_000}
# 3840x2160 is 7.91 times the pixels of 1024x1024; rounded up.
GPT2_CEILING_MICRO = {"low": 47_461, "medium": 419_239, "high": 1_669_043}


def _gpt2(pattern):
    rows = [
        {
            "pattern": pattern,
            "values": {
                "text_input_per_mtok_micro": 5_000_000,
                "image_input_per_mtok_micro": 8_000_000,
                "image_output_per_mtok_micro": 30_000_000,
            },
            "note": OPENAI_GPT2,
        }
    ]
    for quality, micro in GPT2_QUALITY.items():
        for size in GPT2_SIZES:
            rows.append(
                {
                    "pattern": pattern,
                    "size": size,
                    "quality": quality,
                    "values": {"per_image_micro": micro},
                    "note": GPT2_PER_IMAGE,
                }
            )
        rows.append(
            {
                "pattern": pattern,
                "quality": quality,
                "values": {"per_image_micro": GPT2_CEILING_MICRO[quality]},
                "note": GPT2_CEILING,
            }
        )
    return rows


def _gpt15():
    rows = [
        {
            "pattern": "gpt-image-1.5",
            "values": {
                "text_input_per_mtok_micro": 5_000_000,  # gpt-image-1's: unconfirmed for 1.5
                "image_input_per_mtok_micro": 8_000_000,
                "image_output_per_mtok_micro": 32_000_000,
            },
            "note": GPT15 + "; text in $5/M unconfirmed",
        }
    ]
    per_image = {"low": (9_000, 13_000), "medium": (34_000, 50_000), "high": (133_000, 200_000)}
    for quality, (square, oblong) in per_image.items():
        for size, micro in (("1024x1024", square), ("1024x1536", oblong), ("1536x1024", oblong)):
            rows.append(
                {
                    "pattern": "gpt-image-1.5",
                    "size": size,
                    "quality": quality,
                    "values": {"per_image_micro": micro},
                    "was": {"per_image_micro": micro},
                    "note": GPT15,
                }
            )
    return rows


def _retired_notes():
    """Notes only, on the retired models' rows the first seed made."""
    rows = []
    for model in ("gpt-image-1", "dall-e-2", "dall-e-3"):
        rows.append({"pattern": model, "note_only": True, "note": RETIRED})
    return rows


def _tiers(pattern, prices, note, per_input=None, input_note=""):
    rows = [
        {"pattern": pattern, "tier": tier, "values": {"per_image_micro": micro}, "note": note}
        for tier, micro in prices.items()
    ]
    if per_input is not None:
        for row in rows:
            row["values"]["per_input_image_micro"] = per_input
            row["note"] = f"{note}; {input_note}"[:200]
    return rows


GEMINI_31_TIERS = {"512": 44_820, "1K": 67_200, "2K": 100_800, "4K": 151_200}
GEMINI_3_PRO_TIERS = {"1K": 134_400, "2K": 134_400, "4K": 240_000}


def _gemini():
    """Tier rows under patterns that cover the preview ids too (gemini-3-pro-image* matches
    gemini-3-pro-image-preview)."""
    rows = _tiers("gemini-3.1-flash-image*", GEMINI_31_TIERS, GEMINI_31, 560, GEMINI_31_INPUT)
    rows += _tiers(
        "gemini-3-pro-image*", GEMINI_3_PRO_TIERS, GEMINI_3_PRO, 1_120, GEMINI_3_PRO_INPUT
    )
    return rows


# The first seed's one price for every tier of the preview ids: more specific than the tier
# rows' patterns, so it would win over them. Removed while it is as seeded.
SUPERSEDED = {
    "gemini": [
        ("gemini-3.1-flash-image-preview*", 67_000),
        ("gemini-3-pro-image-preview*", 134_000),
    ],
}


FLUX2_PRICES = {  # cents: first megapixel, each further one
    "flux-2-pro": (30_000, 15_000),
    "flux-2-max": (70_000, 30_000),
    "flux-2-flex": (50_000, 50_000),
    "flux-2-klein-4b": (14_000, 1_000),
    "flux-2-klein-9b": (15_000, 2_000),
}


def _flux2():
    rows = []
    for model, (first, extra) in FLUX2_PRICES.items():
        rows.append(
            {
                "pattern": model,
                "values": {
                    "per_image_micro": None,
                    "first_megapixel_micro": first,
                    "extra_megapixel_micro": extra,
                    "per_input_image_micro": extra,
                },
                # flux-2-pro was seeded at $0.03 an image before FLUX.2's megapixel prices.
                "was": {"per_image_micro": 30_000, "first_megapixel_micro": None}
                if model == "flux-2-pro"
                else None,
                "note": FLUX2,
            }
        )
    return rows


XAI_ROWS = [
    {
        "pattern": "grok-imagine-image",
        "values": {"per_image_micro": 20_000, "per_input_image_micro": 2_000},
        "was": {"per_image_micro": 20_000, "per_input_image_micro": None},
        "note": XAI,
    }
]

PRICES = {
    "openai": [*_gpt2("gpt-image-2*"), *_gpt15(), *_retired_notes()],
    "azure": [*_gpt2("gpt-image-2*"), *_gpt15(), *_retired_notes()],
    "gemini": _gemini(),
    "bfl": _flux2(),
    "xai": XAI_ROWS,
}


def seed(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for provider, rows in SUPERSEDED.items():
        for pattern, micro in rows:
            Price.objects.filter(
                provider=provider,
                model_pattern=pattern,
                size="",
                quality="",
                tier="",
                per_image_micro=micro,
                note="",
            ).delete()
    for provider, rows in PRICES.items():
        for row in rows:
            key = {
                "provider": provider,
                "model_pattern": row["pattern"],
                "size": row.get("size", ""),
                "quality": row.get("quality", ""),
                "tier": row.get("tier", ""),
            }
            if row.get("note_only"):
                Price.objects.filter(
                    provider=provider, model_pattern=row["pattern"], note=""
                ).update(note=row["note"])
                continue
            existing = Price.objects.filter(**key).first()
            if existing is None:
                Price.objects.create(**key, **row["values"], note=row["note"])
                continue
            was = row.get("was")
            untouched = was is not None and all(getattr(existing, k) == v for k, v in was.items())
            if untouched and not existing.note:
                for name, value in row["values"].items():
                    setattr(existing, name, value)
                existing.note = row["note"]
                existing.save()


class Migration(migrations.Migration):
    dependencies = [("billing", "0013_price_rules_and_attribution")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
