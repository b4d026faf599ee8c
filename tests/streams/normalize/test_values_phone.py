"""parse_phone's shortcut for the usual US shapes gives exactly phonenumbers' answer (parse, validate, E.164)."""

from __future__ import annotations

import phonenumbers
from hypothesis import given, settings, strategies as st

from streams.normalize.values import parse_phone


def library(text: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(text.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


SHAPES = ["({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "+1 {a} {b} {c}", "1{a}{b}{c}", "+1{a}{b}{c}", "{a}{b}{c}",
          "1-{a}-{b}-{c}", "+1 ({a}) {b}-{c}", "({a}){b}-{c}", "{a} {b} {c}", "1 ({a}) {b} {c}", "+1-{a}-{b}-{c}"]


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(SHAPES), st.integers(0, 999), st.integers(0, 999), st.integers(0, 9999),
       st.sampled_from(["US", "US", "CA", "GB"]))
def test_us_shapes_read_as_the_library_reads_them(shape: str, a: int, b: int, c: int, region: str) -> None:
    text = shape.format(a=f"{a:03d}", b=f"{b:03d}", c=f"{c:04d}")
    assert parse_phone(text, region) == library(text, region)


def test_edges() -> None:
    for text in ["(480) 555-0134", "480-555-0134", "(416) 555-0134", "(800) 555-0199", "(011) 555-0134",
                 "(480) 155-0134", "480 555 013", "+44 20 7946 0958", "(480) 555-0134 x12", "1 480 555 0134",
                 "+1 (480) 555-0134", "4805550134", "14805550134", "+14805550134", "(684) 633-5000", "(340) 776-1234"]:
        for region in ("US", "CA", "GB"):
            assert parse_phone(text, region) == library(text, region), (text, region)


def test_the_us_first_validity_check_agrees_with_the_library_for_every_area_code() -> None:
    """Every +1 area code (US, Canada, the Caribbean, unassigned), with exchanges that are valid or not."""
    from streams.normalize import values

    for area in range(200, 1000):
        for rest in (5550134, 2345678, 9110000, 4561234):
            number = phonenumbers.PhoneNumber(country_code=1, national_number=area * 10_000_000 + rest)
            assert values._valid_nanp(number) == phonenumbers.is_valid_number(number), number
