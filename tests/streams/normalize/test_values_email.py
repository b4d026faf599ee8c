"""parse_email's shortcut for plain addresses gives exactly email-validator's answer (lower-cased), and everything
it does not cover still goes to the library."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings, strategies as st

from streams.normalize.values import _PLAIN_EMAIL, parse_email


def library(text: str) -> str | None:
    try:
        return validate_email(text.strip(), check_deliverability=False).normalized.lower()
    except (EmailNotValidError, UnicodeError, ValueError):
        return None


ATOM = st.text(alphabet="abcXYZ019_+-.", min_size=0, max_size=70)
LABEL = st.text(alphabet="abQZ09-", min_size=0, max_size=66)
TLD = st.sampled_from(["com", "COM", "org", "io", "co", "uk", "test", "local", "localhost", "invalid", "onion", "arpa",
                       "c", "1com", "xn--p1ai", "museum", ""])


@settings(max_examples=600, deadline=None)
@given(ATOM, st.lists(LABEL, min_size=0, max_size=3), TLD)
def test_plain_addresses_read_as_the_library_reads_them(local: str, labels: list[str], tld: str) -> None:
    text = f"{local}@{'.'.join([*labels, tld])}"
    assert parse_email(text) == library(text)


def test_edges() -> None:
    cases = ["Client.123@Example.com", " Jane.Doe+spa@Mail.Example.COM ", "a@123.com", "x..y@example.com",
             ".x@example.com", "x.@example.com", "a@-b.com", "a@b-.com", "a@b--c.com", "a@xn--80ak6aa92e.com",
             "a@example.test", "a@exa_mple.com", "a" * 64 + "@example.com", "a" * 65 + "@example.com",
             "a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com", "a@" + ".".join(["b" * 60] * 4) + ".com",
             "a@" + ".".join(["b" * 61] * 4) + ".com", "ünï@example.com", "a b@example.com", "a@b.c"]
    for text in cases:
        assert parse_email(text) == library(text), text
    assert _PLAIN_EMAIL.fullmatch("client.1@example.com")
