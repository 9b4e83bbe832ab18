"""Increment parses integers exactly as Redis' ``INCRBY`` does (``string2ll``).

Redis accepts ``0``, or an optional ``-`` and a non-zero leading digit, within 64 bits; every
other spelling answers "not an integer" and the stored value is left as it was. The i32 check of
the contract comes after that, on the result.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.store import KeyValueStore, NotIntegerError
from provider.store.entry import parse_integer

NOT_INTEGER = "ERR value is not an integer or out of range"
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def reference(text: str) -> int | None:
    """The grammar, stated independently: ASCII, and equal to its own canonical spelling."""
    if not text or not all(c in "-0123456789" for c in text):
        return None
    try:
        number = int(text)
    except ValueError:
        return None
    return number if str(number) == text and I64_MIN <= number <= I64_MAX else None


@pytest.mark.parametrize(
    "text",
    ["+1", "00", "-0", "007", " 1", "1 ", "", "-", "--1", "1e3", "0x1", "1_000", "\u0661", "²",
     "9223372036854775808", "-9223372036854775809", "12345678901234567890", "1.0"],
)  # fmt: skip
def test_non_canonical_spellings_are_not_integers(text: str) -> None:
    assert parse_integer(text) is None


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0), ("7", 7), ("-7", -7), ("9223372036854775807", I64_MAX),
     ("-9223372036854775808", I64_MIN)],
)  # fmt: skip
def test_canonical_integers_parse(text: str, number: int) -> None:
    assert parse_integer(text) == number


@given(st.text(max_size=24))
def test_parser_matches_the_grammar_on_any_text(text: str) -> None:
    assert parse_integer(text) == reference(text)


@given(
    st.integers(min_value=-(2**66), max_value=2**66),
    st.sampled_from(["", "+", "-", "0", "00", " "]),
)
def test_parser_matches_the_grammar_on_integer_like_text(number: int, prefix: str) -> None:
    for text in (str(number), prefix + str(number), prefix + str(abs(number))):
        assert parse_integer(text) == reference(text)


@pytest.mark.parametrize("stored", ["007", "+1", "-0", "12345678901234567890"])
def test_increment_of_a_non_canonical_value_is_refused_and_changes_nothing(stored: str) -> None:
    store = KeyValueStore("00000000000000aa")
    store.set("k", stored)
    with pytest.raises(NotIntegerError) as excinfo:
        store.increment("k", 1)
    assert str(excinfo.value) == NOT_INTEGER
    assert store.get("k") == stored
