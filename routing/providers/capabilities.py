"""Per-model capabilities: what validation allows and what /v1/models reports, and the pure
size arithmetic (tiers, nearest aspect ratio) that validation and adapters share."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

OUTPUT_FORMATS = ("png", "jpeg", "webp")
# The shapes a caller may ask for with `aspect_ratio`; 1:4 to 8:1 are Gemini 3.1 Flash
# Image's (docs/providers.md, updates of 2026-12-02). A model that cannot make one gets the
# nearest shape it can.
ASPECT_RATIOS = (
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
    "1:4",
    "4:1",
    "1:8",
    "8:1",
)
MAX_N = 10  # images per request, whatever one upstream call makes (the rest is fanned out)
# A tier is the area of a square of this side: 512 ≈ 0.25 MP (Gemini's "512"), 1K ≈ 1 MP,
# 2K ≈ 4 MP, 4K ≈ 16 MP.
TIERS = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}


def nearest_ratio(width: int, height: int, ratios: Iterable[str]) -> str:
    """Of an upstream's aspect ratios ("16:9", "9:19.5", …), the one nearest width:height."""
    wanted = math.log(width / height)

    def distance(ratio: str) -> float:
        across, _, down = ratio.partition(":")
        return abs(math.log(float(across) / float(down)) - wanted)

    return min(ratios, key=distance)


def tier_of(width: int, height: int) -> str:
    """The tier whose area is nearest (in log scale) to width x height."""
    area = math.log(width * height)
    return min(TIERS, key=lambda tier: abs(area - math.log(TIERS[tier] ** 2)))


@dataclass(frozen=True)
class ImageCapabilities:
    # Exact "WxH" sizes accepted; None means any size within the side bounds below.
    sizes: tuple[str, ...] | None = None
    auto_size: bool = True
    min_side: int = 64
    max_side: int = 4096
    size_multiple: int = 1
    max_pixels: int | None = None
    min_pixels: int | None = None
    # The longer side may be at most this many times the shorter (gpt-image-2: 3, i.e. 3:1).
    max_aspect: float | None = None
    default_size: str = "1024x1024"
    # Images one upstream call makes; the gateway fans out concurrent calls for more.
    max_n: int = 10
    # None: any value is passed through; an empty tuple: the option is not supported.
    qualities: tuple[str, ...] | None = None
    styles: tuple[str, ...] | None = ()
    # Formats the upstream produces itself; the gateway converts to the others with Pillow.
    native_output_formats: tuple[str, ...] = ("png",)
    transparent_background: bool = False
    # What the upstream returns natively: bytes ("b64_json") and/or hosted URLs ("url").
    native_response_formats: tuple[str, ...] = ("b64_json",)
    # Whether the upstream's image URLs last long enough to hand to callers (else re-hosted).
    lasting_urls: bool = True
    moderation: bool = False
    edits: bool = False
    max_edit_images: int = 16
    mask: bool = True  # an edit may carry a mask
    input_fidelity: bool = False
    streaming: bool = False
    seed: bool = False
    max_prompt_chars: int = 32000
    # The day ("YYYY-MM-DD") the provider retired or deprecated the model, and what it names
    # instead: shown in /v1/models, and named when the upstream no longer answers for it.
    retired: str | None = None
    successor: str | None = None

    def describe(self) -> dict[str, Any]:
        """The public view for /v1/models."""
        data = asdict(self)
        data["output_formats"] = list(OUTPUT_FORMATS)
        data["response_formats"] = ["url", "b64_json"]
        data["resolutions"] = list(TIERS)
        data["aspect_ratios"] = list(ASPECT_RATIOS)
        data["max_n_per_call"], data["max_n"] = self.max_n, MAX_N
        return data

    def accepts_size(self, width: int, height: int) -> bool:
        if self.sizes is not None:
            return f"{width}x{height}" in self.sizes
        return (
            self.min_side <= width <= self.max_side
            and self.min_side <= height <= self.max_side
            and width % self.size_multiple == 0
            and height % self.size_multiple == 0
            and (self.max_pixels is None or width * height <= self.max_pixels)
            and (self.min_pixels is None or width * height >= self.min_pixels)
            and (
                self.max_aspect is None
                or max(width, height) <= self.max_aspect * min(width, height)
            )
        )
