"""Hypothesis strategies shared by the fuzz tests."""

from __future__ import annotations

from hypothesis import strategies as st


def msgpack_values(*, allow_nan: bool) -> st.SearchStrategy:
    """Any value msgpack can carry, nested a little: for envelopes that are not what they say."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=allow_nan)
        | st.text(max_size=20)
        | st.binary(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=4)
        ),
        max_leaves=12,
    )
