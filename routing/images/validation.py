"""Validate a tenant's JSON body against the resolved model's capabilities.

Every problem is a precise 400 naming the field; nothing here touches the network. Fields
the gateway does not know are kept as `extras` for adapters that forward them unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aperture.errors import InvalidRequest, Unsupported
from routing.images.edit_form import EditForm
from routing.images.references import parse_references
from routing.images.sizing import resolve_size
from routing.providers.base import ImageRequest
from routing.providers.capabilities import MAX_N, OUTPUT_FORMATS, ImageCapabilities

KNOWN_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "style",
        "background",
        "output_format",
        "output_compression",
        "moderation",
        "user",
        "seed",
        "response_format",
        "stream",
        "partial_images",
        "resolution",
        "aspect_ratio",
        "provider",
        "allow_partial",
        "input_fidelity",
        "input_references",
    }
)
MAX_SEED = 2**32 - 1
MAX_PARTIAL_IMAGES = 3


def _string(body: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise InvalidRequest(f"'{field}' is required.", param=field)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be a string.", param=field)
    return value


def _integer(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{field}' must be an integer.", param=field)
    return value


def _choice(
    body: dict[str, Any], field: str, allowed: tuple[str, ...] | None, model: str
) -> str | None:
    value = _string(body, field)
    if value is None or allowed is None:
        return value
    if not allowed:
        raise InvalidRequest(f"The model '{model}' does not support '{field}'.", param=field)
    if value not in allowed:
        raise InvalidRequest(
            f"Invalid '{field}' {value!r} for the model '{model}'; supported: "
            f"{', '.join(allowed)}.",
            param=field,
        )
    return value


def model_name(body: dict[str, Any]) -> str:
    name = _string(body, "model", required=True)
    assert name is not None
    if not name.strip():
        raise InvalidRequest("'model' must not be empty.", param="model")
    return name


def parse_image_request(body: dict[str, Any], caps: ImageCapabilities, model: str) -> ImageRequest:
    """The canonical request for `body`, or InvalidRequest (400) naming the bad field."""
    prompt = _string(body, "prompt", required=True)
    assert prompt is not None
    if not prompt.strip():
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if len(prompt) > caps.max_prompt_chars:
        raise InvalidRequest(
            f"'prompt' is {len(prompt)} characters; the model '{model}' accepts at most "
            f"{caps.max_prompt_chars}.",
            param="prompt",
        )

    n = _integer(body, "n")
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N:
        raise InvalidRequest(f"'n' must be between 1 and {MAX_N}.", param="n")

    output_format = _string(body, "output_format")
    if output_format == "jpg":
        output_format = "jpeg"
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"Invalid 'output_format' {output_format!r}; supported: png, jpeg, webp.",
            param="output_format",
        )
    compression = _integer(body, "output_compression")
    if compression is not None:
        if not 0 <= compression <= 100:
            raise InvalidRequest(
                "'output_compression' must be between 0 and 100.", param="output_compression"
            )
        if output_format not in ("jpeg", "webp"):
            raise InvalidRequest(
                "'output_compression' applies only to output_format jpeg or webp.",
                param="output_compression",
            )

    background = _choice(body, "background", ("transparent", "opaque", "auto"), model)
    if background == "transparent":
        if not caps.transparent_background:
            raise InvalidRequest(
                f"The model '{model}' cannot make transparent backgrounds.", param="background"
            )
        if output_format == "jpeg":
            raise InvalidRequest(
                "background=transparent needs output_format png or webp, not jpeg.",
                param="background",
            )

    response_format = _choice(body, "response_format", ("url", "b64_json"), model) or "b64_json"
    moderation = _choice(body, "moderation", ("low", "auto"), model)
    if moderation is not None and not caps.moderation:
        moderation = None  # a safety hint the upstream has no knob for: nothing to forward
    seed = _integer(body, "seed")
    if seed is not None and not caps.seed:
        raise Unsupported(f"The model '{model}' does not take a seed.", param="seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"'seed' must be between 0 and {MAX_SEED}.", param="seed")
    references = parse_references(body)
    if references and not caps.edits:
        raise Unsupported(
            f"The model '{model}' does not take reference images.", param="input_references"
        )
    stream = _boolean(body, "stream")
    partial_images = _integer(body, "partial_images")
    if partial_images is not None and not 0 <= partial_images <= MAX_PARTIAL_IMAGES:
        raise InvalidRequest(
            f"'partial_images' must be between 0 and {MAX_PARTIAL_IMAGES}.", param="partial_images"
        )

    return ImageRequest(
        prompt=prompt,
        n=n,
        size=resolve_size(
            caps,
            size=_string(body, "size"),
            resolution=_string(body, "resolution"),
            aspect_ratio=_string(body, "aspect_ratio"),
            model=model,
        ),
        quality=_choice(body, "quality", caps.qualities, model),
        style=_choice(body, "style", caps.styles, model),
        background=background,
        output_format=output_format,
        output_compression=compression,
        moderation=moderation,
        user=_string(body, "user"),
        seed=seed,
        response_format=response_format,
        extras={k: v for k, v in body.items() if k not in KNOWN_FIELDS},
        provider_options=_provider_options(body),
        allow_partial=_boolean(body, "allow_partial"),
        # A model that cannot stream answers the buffered response instead.
        stream=stream and caps.streaming,
        partial_images=partial_images or 0,
        references=references,
        resolution=_string(body, "resolution"),
        aspect_ratio=_string(body, "aspect_ratio"),
    )


def _boolean(body: dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be a boolean.", param=field)
    return value


def _provider_options(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`provider`: {"<provider>": {...options...}}; each adapter reads only its own entry."""
    value = body.get("provider")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidRequest(
            "'provider' must be an object of per-provider option objects, e.g. "
            '{"openai": {"moderation": "low"}}.',
            param="provider",
        )
    for name, options in value.items():
        for key in options:
            if str(key).replace("-", "_").lower() in CONTROLLED_OPTIONS:
                raise InvalidRequest(
                    f"'provider.{name}.{key}' is set by the gateway, not by provider options: "
                    "the request's own fields say how many images, which model and whether "
                    "to stream.",
                    param=f"provider.{name}.{key}",
                )
    return {str(name): dict(options) for name, options in value.items()}


# Provider options that would change what the budget hold and the answer rest on (how many
# images, which model, streaming) or what the guardrails read (the prompt, its container, a
# system instruction). Compared in snake_case.
CONTROLLED_OPTIONS = frozenset(
    {
        "prompt",
        "systeminstruction",
        "system_instruction",
        "system",
        "n",
        "model",
        "stream",
        "partial_images",
        "response_format",
        "samplecount",
        "sample_count",
        "candidatecount",
        "candidate_count",
        "num_outputs",
        "num_images",
        "numberofimages",
        "number_of_images",
        "max_images",
        "sequential_image_generation",
        "sequential_image_generation_options",
        "contents",
        "messages",
        "modalities",
        "instances",
        "input",
        "generationconfig",
        "generation_config",
        "parameters",
    }
)


def parse_edit_request(form: EditForm, caps: ImageCapabilities, model: str) -> ImageRequest:
    """An edit: the generation rules for its fields, plus what the model's edits accept."""
    if not caps.edits:
        raise Unsupported(f"The model '{model}' cannot edit images.", param="model")
    if form.mask is not None and not caps.mask:
        raise Unsupported(f"The model '{model}' does not take a mask.", param="mask")
    if len(form.images) > caps.max_edit_images:
        raise InvalidRequest(
            f"The model '{model}' edits at most {caps.max_edit_images} image(s) at once; got "
            f"{len(form.images)}.",
            param="image",
        )
    # `moderation` applies to edits too (OpenAI's JSON edits take it); `style` does not.
    if form.fields.get("style") is not None:
        raise InvalidRequest("'style' does not apply to edits.", param="style")
    if form.fields.get("input_references") is not None:
        raise InvalidRequest(
            "An edit takes its images as 'image' / 'image[]' files (or, in JSON, as 'images'), "
            "not 'input_references'.",
            param="input_references",
        )
    request = parse_image_request(form.fields, caps, model)
    fidelity = _choice(form.fields, "input_fidelity", ("high", "low"), model)
    if fidelity is not None and not caps.input_fidelity:
        raise Unsupported(
            f"The model '{model}' does not take 'input_fidelity'.", param="input_fidelity"
        )
    return replace(request, images=form.images, mask=form.mask, input_fidelity=fidelity)
