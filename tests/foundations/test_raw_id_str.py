"""`id_str` of text skips its regexes for printable text; it must answer as the plain rule does: refuse text with
a control character, cut `123.00` to `123`, keep anything else (stripped)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from foundations.formats.raw import MAX_ID_LENGTH, id_str

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _plain_rule(value: str) -> str | None:
    text = value.strip()
    if not text or len(text) > MAX_ID_LENGTH or _CONTROL.search(text):
        return None
    return text.split(".")[0] if re.fullmatch(r"\d+\.0+", text) else text


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(max_size=140), st.from_regex(r"\s*[0-9٣]{1,12}\.0{0,3}\s*", fullmatch=True),
                 st.text(alphabet=st.sampled_from("09.-ab \t\x00\x1f\x7f\x85\x9f\u200b\u00a0٣"), max_size=20)))
def test_text_ids_follow_the_plain_rule(value: str) -> None:
    assert id_str(value) == _plain_rule(value)
