"""Serializer pieces shared by the management API's apps."""

from decimal import Decimal
from typing import Any, overload

from rest_framework import serializers
from rest_framework.serializers import Serializer

MICRO_PER_USD = 1_000_000


@overload
def usd(micro: int) -> str: ...
@overload
def usd(micro: None) -> None: ...
@overload
def usd(micro: int | None) -> str | None: ...
def usd(micro: int | None) -> str | None:
    """Micro-USD as a decimal string ("0.042000"): money never goes through a float."""
    if micro is None:
        return None
    return f"{Decimal(micro) / MICRO_PER_USD:.6f}"


def micro_from_usd(amount: Decimal | None) -> int | None:
    return None if amount is None else int(amount * MICRO_PER_USD)


class StrictSerializer(Serializer[Any]):
    """An input serializer that refuses fields it does not know (a typo is not ignored)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {unknown[0]: [f"Unknown field; expected one of {sorted(self.fields)}."]}
                )
        return super().to_internal_value(data)


class UsdField(serializers.DecimalField):
    """An amount in USD, up to micro-dollar precision, as a string or a number."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 18)
        kwargs.setdefault("decimal_places", 6)
        kwargs.setdefault("min_value", Decimal(0))
        super().__init__(**kwargs)


def validated(serializer_class: type[Serializer[Any]], data: Any) -> dict[str, Any]:
    """`data` checked by an input serializer: its validated fields, or a 400 naming the field."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
