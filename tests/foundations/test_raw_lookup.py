"""The one key lookup: `payload.Lookup` (indexes and answers kept per read) answers like a plain scan of the keys."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings, strategies as st

from foundations.formats.raw import Lookup, get

SPELLINGS = ["clientId", "client_id", "CLIENTID", "Client-Id", "client id", "email", "Email", "EMAIL_ADDRESS",
             "emailAddress", "phone", "mobilePhone", "MOBILE_PHONE", "id", "ID", "x.y", "xy"]
VALUES = st.one_of(st.none(), st.just(""), st.just([]), st.just({}), st.booleans(), st.integers(-3, 3),
                   st.text(max_size=3), st.just({"nested": 1}), st.just([0]))


def scan(obj: dict[Any, Any], names: tuple[str, ...]) -> Any:
    """The rule, written out: for each name in order, the first key (in the object's order) whose spelling
    without case and separators is the name's; its value counts when it is not None, "", [] or {}."""
    def plain(key: Any) -> str:
        return re.sub(r"[\s_\-.]+", "", str(key)).lower()

    for name in names:
        for key, value in obj.items():
            if plain(key) == plain(name):
                if value is not None and value != "" and value != [] and value != {}:
                    return value
                break
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SPELLINGS), VALUES), max_size=8),
       st.lists(st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=4), min_size=1, max_size=6))
def test_lookup_answers_like_a_scan(pairs: list[tuple[str, Any]], questions: list[list[str]]) -> None:
    obj = dict(pairs)
    look = Lookup()
    for names in questions + questions:  # asked twice: the kept answer must be the same
        expected = scan(obj, tuple(names))
        assert look.get(obj, *names) == expected
        assert get(obj, *names) == expected
        block = look.get_block(obj, *names)
        assert block == (expected if isinstance(expected, dict) else None)


def test_lookup_tells_objects_apart_and_ignores_non_objects() -> None:
    look = Lookup()
    first, second = {"Email": "a@example.com"}, {"email": "b@example.com"}
    assert look.get(first, "email") == "a@example.com"
    assert look.get(second, "email") == "b@example.com"
    assert look.get(["email"], "email") is None and look.get(None, "email") is None
    assert look.has_any(first, frozenset({"email"})) and not look.has_any(first, frozenset({"phone"}))
