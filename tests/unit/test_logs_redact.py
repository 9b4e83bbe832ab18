"""provider.logs.redact_url: credentials in a NATS URL never reach logs, health or stats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.logs import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@host:4222", "nats://alice:***@host:4222"),
        ("nats://t0ken@host:4222", "nats://***@host:4222"),
        ("tls://a:b@n1:4222,nats://n2:4222", "tls://a:***@n1:4222,nats://n2:4222"),
        ("alice:pw@127.0.0.1:4222", "alice:***@127.0.0.1:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://u:p@ss:w@host", "nats://u:***@host"),
        ("", ""),
        (None, ""),
    ],
)
def test_credentials_are_masked(url: str | None, shown: str) -> None:
    assert redact_url(url) == shown


@given(
    st.text(), st.text(alphabet="abcdefgh0123456789:/", min_size=1).filter(lambda s: "@" not in s)
)
def test_the_secret_never_survives_and_nothing_raises(prefix: str, secret: str) -> None:
    url = f"nats://user:{secret}@example:4222"
    assert redact_url(url) == "nats://user:***@example:4222"
    redact_url(prefix)  # arbitrary input: no exception
