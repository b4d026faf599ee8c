"""`Fields.read` answers what `Lookup.get` answers, for every group, on objects with keys in many spellings,
repeated spellings and empty values."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from foundations.formats.raw import Lookup
from streams.normalize.fields import Fields

SPELLINGS = ["clientId", "client_id", "CLIENTID", "Client-Id", "email", "Email", "emailAddress", "email_address",
             "phone", "mobilePhone", "mobile_phone", "cell", "id", "ID", "status", "apptStatus", "appt.status",
             "name", "fullName", "full name", "amount", "amountCents", "amount_cents", "total"]
VALUES = st.one_of(st.none(), st.sampled_from(["", "x", " ", "0", [], {}, [1], {"a": 1}, 0, 1, False, True,
                                                Decimal("0"), Decimal("1.50")]))
GROUPS = st.lists(st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=6).map(tuple), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SPELLINGS), VALUES), max_size=12), GROUPS)
def test_read_equals_lookup_get(pairs: list[tuple[str, Any]], groups: list[tuple[str, ...]]) -> None:
    obj = dict(pairs)
    fields = Fields(**{f"g{number}": spellings for number, spellings in enumerate(groups)})
    look = Lookup()
    found = fields.read(look.index(obj) or {})
    for number, spellings in enumerate(groups):
        assert found.get(f"g{number}") is look.get(obj, *spellings)  # the very same value
        assert (f"g{number}" in found) == (look.get(obj, *spellings) is not None)
    assert fields.read_object(obj) == found
    assert fields.read_object("not an object") == {}
