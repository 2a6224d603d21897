"""The local guardrail checks: keywords, regular expressions and personal data in a prompt.

Each is compiled once (when a policy is loaded, routing/guardrails/policies.py) and then
searched per request. Keywords match whole words in any case and with or without accents;
regular expressions run on RE2, whose matching time is linear in the prompt, so no pattern
can backtrack catastrophically; personal data is found by pattern and confirmed by checksum
where the format has one (Luhn for payment cards, ISO 7064 mod 97 for IBANs).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import cached_property

import re2

MAX_PATTERNS = 200
MAX_PATTERN_CHARS = 1000
# RE2 matches in time linear in the prompt, times the size of the compiled program: a
# policy's patterns together are kept small enough that no prompt costs a worker much.
MAX_REGEX_PATTERNS = 50
MAX_REGEX_PROGRAM = 1000
PII_DETECTORS = ("email", "phone", "payment_card", "iban")


class PatternInvalid(ValueError):
    """A keyword list or pattern a policy cannot be saved with; the message says why."""


class Prompt:
    """A prompt as the checks read it: as sent, and folded (no case, no accents) once for
    all the policies of a request."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def folded(self) -> str:
        return _fold(self.text)

    @cached_property
    def normalized(self) -> str:
        """NFKC, without the format characters that render as nothing (zero-width space,
        soft hyphen, joiners), which tokenizers drop and a reader never sees."""
        if self.text.isascii():
            return self.text
        return unicodedata.normalize("NFKC", _visible(self.text))

    @cached_property
    def number_runs(self) -> list[str]:
        """Runs of digits and separators, where phone and card numbers are looked for."""
        return [m.group() for m in _NUMBER_RUN.finditer(self.text)]


def _visible(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def _fold(text: str) -> str:
    if text.isascii():
        return text.lower()  # the common case; casefold() and lower() agree on ASCII
    decomposed = unicodedata.normalize("NFKD", _visible(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# Scripts written without spaces between words: a keyword there has no word boundary.
_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def _unspaced(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _UNSPACED)


def _joined(a: str, b: str) -> bool:
    """Whether two adjacent characters belong to one word: both letters, digits or _,
    unless either is of a script written without spaces (炸弹 in 如何制造炸弹)."""
    if not (a.isalnum() or a == "_") or not (b.isalnum() or b == "_"):
        return False
    return not (_unspaced(a) or _unspaced(b))


def _word_at(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] stands as whole words (nothing of a word runs on either side)."""
    if start and _joined(text[start - 1], text[start]):
        return False
    return not (end < len(text) and _joined(text[end - 1], text[end]))


Finder = Callable[[Prompt], str | None]  # what matched (a detector's name, or a marker)


def _clean_list(values: Sequence[object], what: str) -> list[str]:
    if not values:
        raise PatternInvalid(f"A {what} policy needs at least one entry.")
    if len(values) > MAX_PATTERNS:
        raise PatternInvalid(f"A policy takes at most {MAX_PATTERNS} entries.")
    cleaned = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise PatternInvalid(f"Every {what} entry must be a non-empty string.")
        if len(value) > MAX_PATTERN_CHARS:
            raise PatternInvalid(f"An entry is longer than {MAX_PATTERN_CHARS} characters.")
        cleaned.append(value.strip())
    return cleaned


def keywords_finder(words: Sequence[object]) -> Finder:
    """Whole-word matches of any of `words` (phrases allowed), case- and accent-insensitive:
    "Café" finds "cafe" and "CAFÉ", never "cafeteria"."""
    folded = sorted({_fold(w) for w in _clean_list(words, "keywords")}, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in folded)
    # An alternation of escaped literals: Python's engine cannot backtrack badly on it. Word
    # boundaries are checked on each hit rather than in the pattern (where lookbehind would
    # slow every position's attempt).
    pattern = re.compile(alternatives)

    def find(prompt: Prompt) -> str | None:
        text = prompt.folded
        for match in pattern.finditer(text):
            if _word_at(text, match.start(), match.end()):
                return "keyword"
        return None

    return find


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20  # a pattern's compiled program, bounded
    return options


def compile_regex(pattern: str) -> re2._Regexp:
    """One RE2 pattern, or PatternInvalid naming what RE2 refused (backreferences and
    lookaround, which need backtracking, are not RE2 syntax)."""
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as error:
        reason = error.args[0] if error.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise PatternInvalid(f"Pattern {pattern[:80]!r} is not valid RE2: {reason}.") from None


def _compiled_regexes(patterns: Sequence[object]) -> list[re2._Regexp]:
    cleaned = _clean_list(patterns, "regex")
    if len(cleaned) > MAX_REGEX_PATTERNS:
        raise PatternInvalid(f"A regex policy takes at most {MAX_REGEX_PATTERNS} patterns.")
    compiled = [compile_regex(p) for p in cleaned]
    if regex_program_size(compiled) > MAX_REGEX_PROGRAM:
        raise PatternInvalid(
            f"These patterns compile to {regex_program_size(compiled)} RE2 instructions; a "
            f"policy may have {MAX_REGEX_PROGRAM} at most (a{{1000}} alone is 1,000): "
            "simplify them or split them over several policies."
        )
    return compiled


def regex_program_size(compiled: Sequence[re2._Regexp]) -> int:
    return sum(int(c.programsize) for c in compiled)


def regex_size(patterns: Sequence[object]) -> int:
    """The compiled size of valid patterns (PatternInvalid otherwise)."""
    return regex_program_size(_compiled_regexes(patterns))


def regex_finder(patterns: Sequence[object]) -> Finder:
    """Any of the RE2 `patterns`, searched in the prompt with invisible format characters
    removed and compatibility forms folded (NFKC: fullwidth letters read as ASCII); case as
    written (write (?i) to ignore it)."""
    compiled = _compiled_regexes(patterns)

    def find(prompt: Prompt) -> str | None:
        text = prompt.normalized
        return "pattern" if any(c.search(text) for c in compiled) else None

    return find


# --- personal data --------------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})*\.[^\W\d_]{2,24}\b")
# Phone and card numbers are looked for only in runs of digits and separators, found in one
# fast pass; most prompts have none.
_NUMBER_RUN = re.compile(r"[+(\d][\d ().-]{6,}\d")
_PHONE = re.compile(
    r"(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +49 30 1234 5678
    r"|\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567, 555-123-4567
    r"|0\d{1,4}(?:[ .-]\d{2,4}){2,4}"  # 030 1234 5678, 01 23 45 67 89
    r")"
)
_DIGIT_GROUP = re.compile(r"\d+")
# Upper case, as IBANs are printed: a lower-case word after one is not read as its tail.
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def luhn_valid(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: the check digits make the rearranged number ≡ 1 (mod 97)."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _standalone(text: str, pattern: re.Pattern[str]) -> list[str]:
    """pattern's matches in text that no letter or digit runs on from, either side."""
    return [m.group() for m in pattern.finditer(text) if _word_at(text, m.start(), m.end())]


def _has_email(prompt: Prompt) -> bool:
    return "@" in prompt.text and _EMAIL.search(prompt.text) is not None


def _has_phone(prompt: Prompt) -> bool:
    return any(
        8 <= len(_digits(number)) <= 15
        for run in prompt.number_runs
        for number in _standalone(run, _PHONE)
    )


def _card_readings(run: str) -> list[str]:
    """Every span of whole digit groups of a run that is 13 to 19 digits long: the card in
    "4111 1111 1111 1111 123" (its CVV after it), "4111.1111.1111.1111" or "4111111111111111"."""
    groups = _DIGIT_GROUP.findall(run)
    readings = []
    for first in range(len(groups)):
        digits = ""
        for group in groups[first:]:
            digits += group
            if len(digits) > 19:
                break
            if len(digits) >= 13:
                readings.append(digits)
    return readings


def _has_card(prompt: Prompt) -> bool:
    return any(luhn_valid(reading) for run in prompt.number_runs for reading in _card_readings(run))


def _has_iban(prompt: Prompt) -> bool:
    """An IBAN, possibly followed by other upper-case groups: each shorter reading is tried."""
    for candidate in _standalone(prompt.text, _IBAN):
        groups = candidate.split(" ")
        if any(iban_valid(" ".join(groups[:end])) for end in range(len(groups), 0, -1)):
            return True
    return False


_DETECTORS: dict[str, Callable[[Prompt], bool]] = {
    "email": _has_email,
    "payment_card": _has_card,
    "iban": _has_iban,
    "phone": _has_phone,  # last: a card number is not reported as a phone number
}


def clean_detectors(names: Sequence[object]) -> list[str]:
    unknown = [n for n in names if n not in PII_DETECTORS]
    if unknown:
        raise PatternInvalid(f"Unknown detector {unknown[0]!r}; known: {', '.join(PII_DETECTORS)}.")
    return [str(n) for n in names] or list(PII_DETECTORS)


def pii_finder(detectors: Sequence[object]) -> Finder:
    """The first of `detectors` that finds personal data in the prompt, by name."""
    wanted = set(clean_detectors(detectors))
    checks = [(name, check) for name, check in _DETECTORS.items() if name in wanted]

    def find(prompt: Prompt) -> str | None:
        return next((name for name, check in checks if check(prompt)), None)

    return find
