"""Pure guards against hostile bodies (issue 13): nesting scan, id checks, control characters, metric labels."""

from __future__ import annotations

from decimal import Decimal

import pytest

from foundations.config import Settings
from foundations.formats.raw import MAX_DEPTH, PayloadError, check_nesting, clean_text, id_issue, id_str, parse_body
from foundations.metrics import LocationLabels, configured_locations


def deep(levels: int, open_: bytes = b'{"a":', close: bytes = b"}") -> bytes:
    return open_ * levels + b"1" + close * levels


def test_nesting_limit_is_exact_and_applies_to_objects_and_arrays() -> None:
    check_nesting(deep(MAX_DEPTH))
    check_nesting(deep(MAX_DEPTH, b"[", b"]"))
    for body in (deep(MAX_DEPTH + 1), deep(MAX_DEPTH + 1, b"[", b"]"), deep(100_000)):
        with pytest.raises(PayloadError, match="nests deeper than 64"):
            check_nesting(body)
    with pytest.raises(PayloadError, match="nests deeper"):
        parse_body(deep(100_000))


def test_brackets_inside_strings_do_not_count() -> None:
    body = b'{"note": "' + b"{[" * 500 + b'\\"' + b"[" * 100 + b'", "a": [1, 2]}'
    check_nesting(body)
    assert parse_body(body)["a"] == [1, 2]


def test_wide_bodies_pass() -> None:
    check_nesting(b"[" + b",".join([b"{}"] * 50_000) + b"]")


def test_form_bracket_keys_are_bounded() -> None:
    with pytest.raises(PayloadError, match="nests deeper"):
        parse_body(b"client" + b"[a]" * 1000 + b"=1", "application/x-www-form-urlencoded")


def test_decimal_out_of_range_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="number out of range"):
        parse_body(b'{"clientId": 1E+9999999999999999999999}')


@pytest.mark.parametrize(("value", "issue"), [
    ({"a": 1}, "not a string or number"), ([1], "not a string or number"), (True, "not a string or number"),
    ("9" * 129, "longer than 128 characters"), (10**200, "longer than 128 characters"),
    (Decimal("1E+999999"), "longer than 128 characters"), ("48\x0013", "contains control characters"),
    ("A-\u00851", "contains control characters"), (Decimal("NaN"), "not a finite number"),
])
def test_unusable_ids_say_why(value: object, issue: str) -> None:
    assert id_str(value) is None
    assert id_issue(value) == issue


@pytest.mark.parametrize("value", ["48213", 48213, Decimal("48213.0"), "9" * 128, None, "", "  "])
def test_usable_or_absent_ids_have_no_issue(value: object) -> None:
    assert id_issue(value) is None


def test_clean_text() -> None:
    assert clean_text("Ja\x00\x07ne") == "Jane"
    assert clean_text("Doe\x1b[31m\x9b") == "Doe[31m"
    assert clean_text("line\r\nbreak\ttab") == "line break tab"
    assert clean_text("Zoë 😀 ليلى") == "Zoë 😀 ليلى"


def test_location_labels_come_from_configuration(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "locations.yaml"  # type: ignore[operator]
    path.write_text('default: {ghl_location_id: G0}\nlocations:\n  - apro: ["3", "Scottsdale"]\n'
                    '    ghl_location_id: G1\n  - apro: Mesa\n    ghl_location_id: G2\n')
    settings = Settings(webhook_tokens="a" * 16 + "@7," + "b" * 16, ghl_location_id="GHL1", locations_file=path,
                        _env_file=None)
    assert configured_locations(settings) == {"7", "GHL1", "3", "Scottsdale", "Mesa"}
    labels = LocationLabels.from_settings(settings)
    assert [labels(v) for v in ("3", "7", "scottsdale", "Mesa", None, "", "unknown", "8", "x" * 1000)] == [
        "3", "7", "Scottsdale", "Mesa", "unknown", "unknown", "unknown", "other", "other"]
    assert len({labels(f"L{n}") for n in range(15_000)}) == 1
