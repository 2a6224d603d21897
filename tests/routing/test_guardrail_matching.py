"""The local guardrail checks as plain functions: keywords, RE2 patterns and PII detectors."""

import pytest

from routing.guardrails.matching import (
    PatternInvalid,
    Prompt,
    clean_detectors,
    iban_valid,
    keywords_finder,
    luhn_valid,
    pii_finder,
    regex_finder,
)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Crème brûlée", True),
        ("CREME BRULEE", True),
        ("creme   brulee!", True),
        ("crèmebrûlée", False),
        ("une crème", False),
        ("ÑANDÚ", True),
        ("ñandúes", False),
        ("(nandu)", True),
        ("the_nandu", False),
    ],
)
def test_keywords_fold_case_and_accents_and_match_whole_words(text: str, found: bool) -> None:
    find = keywords_finder(["crème brûlée", "Ñandú"])

    assert (find(Prompt(text)) == "keyword") is found


def test_a_keyword_list_needs_real_entries() -> None:
    for bad in ([], [""], ["  "], [3]):
        with pytest.raises(PatternInvalid):
            keywords_finder(bad)


def test_regexes_are_re2_and_match_the_prompt_as_sent() -> None:
    find = regex_finder([r"\bSKU-\d+\b", r"(?i)confidential"])

    assert find(Prompt("order SKU-12 now")) == "pattern"
    assert find(Prompt("order sku-12 now")) is None  # case as written
    assert find(Prompt("CONFIDENTIAL draft")) == "pattern"
    with pytest.raises(PatternInvalid, match="not valid RE2"):
        regex_finder([r"(\w+)\s\1"])


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("5500005555555559", True),
        ("378282246310005", True),
        ("378282246310006", False),
    ],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("DE89 3704 0044 0532 0130 00", True),
        ("GB82WEST12345698765432", True),
        ("GB82 WEST 1234 5698 7654 33", False),
        ("FR14 2004 1010 0505 0001 3M02 606", True),
        ("DE89", False),
    ],
)
def test_iban_check_digits(iban: str, valid: bool) -> None:
    assert iban_valid(iban) is valid


@pytest.mark.parametrize(
    ("text", "detector"),
    [
        ("write to ana@example.com", "email"),
        ("Visa 4111-1111-1111-1111 exp 12/29", "payment_card"),
        ("Amex 3782 822463 10005", "payment_card"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "iban"),
        ("ring +1 415 555 0132", "phone"),
        ("ring 030 1234 5678", "phone"),
        ("a 1920x1080 poster of 2026-12-02", None),
        ("version 1.2.3.4 of the logo", None),
        ("4111 1111 1111 1112", None),
        ("user at example dot com", None),
    ],
)
def test_pii_detectors(text: str, detector: str | None) -> None:
    assert pii_finder([])(Prompt(text)) == detector


def test_pii_detectors_are_named_and_default_to_all() -> None:
    assert clean_detectors([]) == ["email", "phone", "payment_card", "iban"]
    assert pii_finder(["email"])(Prompt("4111 1111 1111 1111")) is None
    with pytest.raises(PatternInvalid, match="Unknown detector 'ssn'"):
        clean_detectors(["ssn"])
