"""The client_state table value (streams/plan/state_codec.py): compact, lossless, readable across versions."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from foundations.formats.normalized import (
    Appointment,
    Client,
    EventKind,
    Invoice,
    LineItem,
    Location,
    NormalizedEvent,
    Provider,
    Service,
)
from streams.plan import state_codec
from streams.plan.planner import plan
from streams.plan.state import ClientState, mark_done, record_contact_id

UTC = timezone.utc
LOC = Location(id="3", name="Scottsdale", timezone="America/Phoenix")
T0 = datetime(2026, 3, 2, 16, tzinfo=UTC)
# The dictionary's bytes are part of the format: every stored "z1:" value was compressed against them.
DICTIONARY_SHA256 = "eb0ace9d091a9905ec6d415492d18b1252ac029bdbdfa3b92e33254ec4556179"


def patient(n: int, visits: int, *, done: bool = True) -> ClientState:
    """Client `n` after `visits` booked-and-paid visits; with `done`, every op is done (a state at rest)."""
    client = Client(id=str(50000 + n), first_name="Ana", last_name=f"Lopez{n}", email=f"ana.{n}@example.com",
                    phone=f"+1602555{n % 10000:04d}", date_of_birth=date(1970 + n % 30, 1 + n % 12, 1 + n % 28))
    state: ClientState | None = None
    for v in range(visits):
        start = T0 + timedelta(days=30 * v)
        appt = Appointment(id=f"A{n}-{v}", start=start, provider=Provider(id="P-1", name="Dr. Kim"),
                           services=(Service(name="HydraFacial", service_type="Facials"),))
        paid = Invoice(id=f"I{n}-{v}", number=str(7000 + v), amount_paid=Decimal("199.50"), appointment=appt,
                       items=(LineItem(name="HydraFacial", type="Service", amount=Decimal("199.50")),), paid_at=start)
        for kind, at, block in ((EventKind.APPOINTMENT_BOOKED, start - timedelta(days=7), {"appointment": appt}),
                                (EventKind.INVOICE_PAID, start, {"invoice": paid})):
            event = NormalizedEvent(event_id=f"ev-{n}-{v}-{kind.value}", kind=kind, occurred_at=at, location=LOC,
                                    client=client, **block)
            state = plan(event, state, location_label="loc-main", now=at).new_state
            if done:
                for op in state.pending_ops():
                    state = mark_done(record_contact_id(state, "loc-main", f"ct-{n}"), op.op_id)
    assert state is not None
    return state


def test_the_dictionary_is_frozen() -> None:
    assert hashlib.sha256(state_codec.DICTIONARY).hexdigest() == DICTIONARY_SHA256


@hsettings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=0, max_value=10**6), visits=st.integers(min_value=1, max_value=12),
       done=st.booleans())
def test_every_state_comes_back_equal(n: int, visits: int, done: bool) -> None:
    state = patient(n, visits, done=done)
    value = state_codec.encode(state)
    assert isinstance(value, str) and json.loads(json.dumps(value)) == value  # the table's JSON codec keeps it
    assert state_codec.decode(value) == state
    assert state_codec.decode(value.encode()) == state


def test_a_state_at_rest_takes_a_fraction_of_its_json() -> None:
    states = [patient(n, 2) for n in range(50)]
    plain = sum(len(s.to_json()) for s in states)
    compact = sum(len(state_codec.encode(s)) for s in states)
    assert compact * 4 < plain, (compact, plain)


def test_values_written_before_compression_still_decode() -> None:
    state = patient(7, 3)
    assert state_codec.decode(state.to_json().decode()) == state
    assert state_codec.decode(state.to_json()) == state


def test_a_value_stored_by_this_version_decodes_in_every_later_one() -> None:
    """Built by hand from the format (prefix, raw deflate against the dictionary, base64), not by `encode`."""
    state = patient(3, 1)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, state_codec.DICTIONARY)
    stored = "z1:" + base64.b64encode(deflate.compress(state.to_json()) + deflate.flush()).decode()
    assert state_codec.decode(stored) == state


@pytest.mark.parametrize("value", [
    "x1:abc",  # another encoding
    "z1:!!!not-base64",
    "z1:" + base64.b64encode(b"not deflate at all \xff\x00").decode(),
    "",
])
def test_an_unreadable_value_is_refused_without_its_content(value: str) -> None:
    with pytest.raises(state_codec.StateDecodeError) as caught:
        state_codec.decode(value)
    assert value[3:] not in str(caught.value) or not value[3:]


def test_a_value_that_inflates_without_bound_is_refused() -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, state_codec.DICTIONARY)
    bomb = deflate.compress(b"{" + b" " * (state_codec.MAX_STATE_BYTES + 1024)) + deflate.flush()
    assert len(bomb) < 64 * 1024
    with pytest.raises(state_codec.StateDecodeError, match="inflates beyond"):
        state_codec.decode("z1:" + base64.b64encode(bomb).decode())
