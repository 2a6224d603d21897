"""routing/providers/base.py's is_base64: an upstream's image is checked without decoding it;
what it accepts and refuses."""

from __future__ import annotations

import base64
import os
import random
import re

import pytest

from routing.providers.base import is_base64


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        "aGVsbG8=",
        "aGk=",
        "aGVsbG8gd29ybGQ=",
        "+/+/",
        base64.b64encode(os.urandom(1_500_000)).decode(),  # an image's size
    ],
)
def test_well_formed_base64_is_accepted(text: str) -> None:
    assert is_base64(text)


@pytest.mark.parametrize(
    "text",
    [
        "AAA",  # not a multiple of four
        "A===",  # three padding characters
        "AA=A",  # padding before the end
        "=AAA",
        "AA==AAAA",
        "AAAA\n",  # a line break
        "AA AA A",
        "AA-_",  # the URL-safe alphabet
        "AAÄA",  # not ASCII
        "AAA\x00",
        "aGVsbG8=" * 3,  # padding inside
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    assert not is_base64(text)


def test_it_agrees_with_the_definition_over_random_strings() -> None:
    """The definition it replaced: a multiple of four characters of the alphabet, then at
    most two `=`."""
    definition = re.compile(r"[A-Za-z0-9+/]*={0,2}")
    chance = random.Random(18)
    for _ in range(20_000):
        text = "".join(chance.choices("Aa0+/=- \n\xe9", k=chance.randrange(0, 13)))
        expected = len(text) % 4 == 0 and definition.fullmatch(text) is not None
        assert is_base64(text) is expected, repr(text)
