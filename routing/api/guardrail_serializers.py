"""Input and output shapes of `/api/v1/guardrails`. Types and sizes are checked here; whether a
policy could be enforced as written is routing/guardrails/policies.py's to say."""

from typing import Any

from rest_framework import serializers

from aperture.api_fields import StrictSerializer
from routing.guardrails.matching import MAX_PATTERN_CHARS, MAX_PATTERNS, PII_DETECTORS
from routing.models import GuardrailPolicy

MAX_CATEGORIES = 50
HIDDEN = "null on a platform policy: the operator's settings are not shown."


class GuardrailOut(serializers.Serializer[Any]):
    id = serializers.CharField()
    name = serializers.CharField()
    owner = serializers.ChoiceField(
        choices=["workspace", "platform"],
        help_text="platform: an operator's policy, applied to every workspace and read-only.",
    )
    kind = serializers.ChoiceField(choices=GuardrailPolicy.Kind.choices)
    action = serializers.ChoiceField(choices=GuardrailPolicy.Action.choices)
    applies_to = serializers.ListField(
        child=serializers.ChoiceField(choices=GuardrailPolicy.Route.choices),
        help_text="Empty: every route.",
    )
    patterns = serializers.ListField(
        child=serializers.CharField(), allow_null=True, help_text=HIDDEN
    )
    detectors = serializers.ListField(
        child=serializers.CharField(), allow_null=True, help_text=HIDDEN
    )
    credential = serializers.CharField(
        allow_null=True,
        help_text="moderation: the id of the workspace's credential it calls; null if none or "
        "not the workspace's own.",
    )
    moderation_model = serializers.CharField()
    categories = serializers.DictField(
        child=serializers.FloatField(), allow_null=True, help_text=HIDDEN
    )
    check_prompt = serializers.BooleanField()
    check_output = serializers.BooleanField()
    allow_partial = serializers.BooleanField()
    charge_withheld = serializers.BooleanField()
    timeout_seconds = serializers.FloatField()
    fail_open = serializers.BooleanField(allow_null=True, help_text=HIDDEN)
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class GuardrailUpdateIn(StrictSerializer):
    """Every field optional: only those sent are changed."""

    name = serializers.SlugField(
        max_length=64, required=False, help_text="Named in the error a blocked caller gets."
    )
    kind = serializers.ChoiceField(choices=GuardrailPolicy.Kind.choices, required=False)
    action = serializers.ChoiceField(
        choices=GuardrailPolicy.Action.choices,
        required=False,
        help_text="block: 400 content_policy_violation, no upstream call; flag: served, and "
        "the usage record names the policy. Default: block.",
    )
    applies_to = serializers.ListField(
        child=serializers.ChoiceField(choices=GuardrailPolicy.Route.choices),
        max_length=len(GuardrailPolicy.Route.values),
        required=False,
        help_text="The routes checked. Empty (the default): every route.",
    )
    patterns = serializers.ListField(
        child=serializers.CharField(max_length=MAX_PATTERN_CHARS),
        max_length=MAX_PATTERNS,
        required=False,
        help_text="keywords: words or phrases (whole words, any case or accent); regex: RE2 "
        "patterns (no backreferences or lookaround). Other kinds: empty.",
    )
    detectors = serializers.ListField(
        child=serializers.ChoiceField(choices=PII_DETECTORS),
        max_length=len(PII_DETECTORS),
        required=False,
        help_text="pii: the detectors to run. Empty: all of them.",
    )
    credential = serializers.CharField(
        max_length=32,
        allow_null=True,
        required=False,
        help_text="moderation: the id of one of the workspace's OpenAI credentials.",
    )
    moderation_model = serializers.CharField(
        max_length=64, required=False, help_text="Default: omni-moderation-latest."
    )
    categories = serializers.DictField(
        child=serializers.FloatField(min_value=0, max_value=1),
        required=False,
        help_text='moderation: {"category": threshold from 0 to 1}; a score at or above a '
        "threshold matches. Empty (the default): the model's own verdict.",
    )
    check_prompt = serializers.BooleanField(
        required=False, help_text="moderation: check the prompt (default true)."
    )
    check_output = serializers.BooleanField(
        required=False,
        help_text="moderation: check the generated images (default false; not on streams).",
    )
    allow_partial = serializers.BooleanField(
        required=False,
        help_text="Output: return the images that passed when others are withheld (default "
        "false: a withheld image fails the request).",
    )
    charge_withheld = serializers.BooleanField(
        required=False, help_text="Output: charge withheld images (default true)."
    )
    timeout_seconds = serializers.FloatField(
        min_value=0.1,
        max_value=30,
        required=False,
        help_text="moderation: longest wait for the moderation endpoint (default 3).",
    )
    fail_open = serializers.BooleanField(
        required=False,
        help_text="moderation: serve the request when the endpoint fails (default false: "
        "503 guardrail_unavailable).",
    )
    enabled = serializers.BooleanField(required=False, help_text="Default true.")

    def validate_categories(self, value: dict[str, float]) -> dict[str, float]:
        if len(value) > MAX_CATEGORIES:
            raise serializers.ValidationError(f"At most {MAX_CATEGORIES} categories.")
        if any(not name or len(name) > 100 for name in value):
            raise serializers.ValidationError("Category names are 1 to 100 characters.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:  # a create always has a name and a kind
            raise serializers.ValidationError("Nothing to change.")
        return attrs


class GuardrailCreateIn(GuardrailUpdateIn):
    """A new workspace policy: a name and a kind, the rest as for an update (unsent: the
    default)."""

    name = serializers.SlugField(
        max_length=64, help_text="Named in the error a blocked caller gets."
    )
    kind = serializers.ChoiceField(choices=GuardrailPolicy.Kind.choices)


class GuardrailTestIn(StrictSerializer):
    prompt = serializers.CharField(max_length=32_000, trim_whitespace=False)


class GuardrailTestOut(serializers.Serializer[Any]):
    matched = serializers.BooleanField()
    outcome = serializers.ChoiceField(
        source="action",
        choices=["block", "flag", "pass", "unavailable"],
        help_text="What the request would meet: block (refused), flag (served and noted), "
        "pass (served), unavailable (the moderation endpoint gave no verdict).",
    )
    detail = serializers.CharField(help_text="What matched and what would follow.")
