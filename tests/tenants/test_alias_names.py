"""tenants checks a key's alias names through a hook that routing, the layer above, fills in."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from routing.selectors import unknown_alias_names
from tenants import alias_names


def test_routing_registers_its_alias_lookup_when_the_apps_load() -> None:
    assert alias_names._lookup is unknown_alias_names


def test_without_a_registered_lookup_the_check_refuses_to_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(alias_names, "_lookup", None)
    with pytest.raises(ImproperlyConfigured, match="routing"):
        alias_names.unknown_alias_names(1, ["demo-image"])
