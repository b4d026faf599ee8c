"""Benchmark: CPU and changelog bytes per event against the length of one client's history.

Replays the sink's state path in process (decode and merge the done marks, plan, write the state, one done mark
per op, the whole state again at the event's end, as sinks/agent.py does) for one client with 10, 100 and 1,000
events of history, then times the next events; bounded state (the default) beside the whole history, same run.
Target: per-event CPU and bytes at 1,000 within 1.5x of 10.   Usage: python bench/state_growth.py [--block N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from foundations.formats.crm_commands import UpsertContact  # noqa: E402
from foundations.formats.normalized import (  # noqa: E402
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
from streams.plan import marks, state_codec  # noqa: E402
from streams.plan.planner import plan  # noqa: E402
from streams.plan.state import mark_done, record_contact_id  # noqa: E402

UTC = timezone.utc
LOCATION = Location(id="3", name="Scottsdale", timezone="America/Phoenix")
CLIENT = Client(id="48213", first_name="Jane", last_name="Doe", email="jane.doe@example.com",
                phone="+14805550134", date_of_birth=date(1985, 3, 14))
SERVICES = [("Botox - Forehead", "Injectables", "420.00"), ("HydraFacial", "Facials", "199.00"),
            ("Laser Hair Removal", "Laser", "275.00"), ("Chemical Peel", "Facials", "150.00")]
LABEL = "loc-main"


def history(count: int, seed: int = 7) -> list[NormalizedEvent]:
    """A client's events: a visit about every four weeks (booking, sometimes a reschedule or a cancellation,
    the paid invoice at the visit, now and then a refund), a profile update now and then."""
    rng = random.Random(seed)
    events: list[NormalizedEvent] = []
    at = datetime(2010, 1, 4, 15, tzinfo=UTC)
    visit = 0

    def add(kind: EventKind, when: datetime, **blocks: object) -> None:
        events.append(NormalizedEvent(event_id=f"ev-{len(events)}", kind=kind, occurred_at=when,
                                      raw_offset=len(events), location=LOCATION, client=CLIENT, **blocks))

    while len(events) < count:
        visit += 1
        name, kind, price = rng.choice(SERVICES)
        start = at + timedelta(days=7, hours=rng.randint(0, 6))
        appt = Appointment(id=f"A{visit}", start=start, provider=Provider(id="P-12", name="Dr. Maya Lee"),
                           services=(Service(name=name, service_type=kind),))
        add(EventKind.APPOINTMENT_BOOKED, at, appointment=appt)
        roll = rng.random()
        if roll < 0.15:
            moved = appt.model_copy(update={"start": start + timedelta(days=2)})
            add(EventKind.APPOINTMENT_UPDATED, at + timedelta(days=1), appointment=moved)
            appt = moved
        if roll > 0.9:
            add(EventKind.APPOINTMENT_CANCELLED, at + timedelta(days=3), appointment=appt)
        else:
            inv = Invoice(id=f"INV-{visit}", number=str(1000 + visit), amount_paid=Decimal(price), appointment=appt,
                          items=(LineItem(name=name, type="Service", amount=Decimal(price)),), paid_at=appt.start)
            add(EventKind.INVOICE_PAID, appt.start or at, invoice=inv)
            if rng.random() < 0.05:
                refund = inv.model_copy(update={"amount_paid": Decimal("50.00")})
                add(EventKind.INVOICE_REFUNDED, (appt.start or at) + timedelta(days=20), invoice=refund)
        if visit % 12 == 0:
            add(EventKind.CLIENT_UPSERTED, at + timedelta(days=5))
        at += timedelta(days=rng.randint(21, 35))
    events = events[:count]
    return sorted(events, key=lambda ev: (ev.occurred_at, ev.raw_offset))


def replay(events: list[NormalizedEvent], raw: str | None, bounded: bool) -> tuple[str | None, int]:
    """The sink's state path for `events`; returns the final stored value and the bytes written (values; a
    tombstone counts 0)."""
    written = 0
    stored_marks: str | None = None
    for ev in events:
        state = state_codec.decode(raw) if raw is not None else None
        if state is not None and stored_marks is not None:
            state = marks.merge(state, marks.decode(stored_marks))
        p = plan(ev, state, location_label=LABEL, now=ev.occurred_at or datetime.now(UTC), bounded=bounded)
        if state is None or p.new_state != state:
            raw = state_codec.encode(p.new_state)  # the plan write (the marks key is cleared with it)
            stored_marks = None
            written += len(raw)
        state = p.new_state
        pending = state.pending_ops()
        done = marks.EMPTY
        for op in pending:
            before = state
            if isinstance(op, UpsertContact) and LABEL not in state.crm:
                state = record_contact_id(state, LABEL, "contact-1")
            state = mark_done(state, op.op_id)
            if op is pending[-1]:  # the event's last write: the whole state, marks folded in
                raw = state_codec.encode(state)
                stored_marks = None
                written += len(raw)
            else:  # an op's done mark
                done = marks.add(done, op, before, state)
                stored_marks = marks.encode(done)
                written += len(stored_marks)
    return raw, written


def measure(size: int, block: int, repeats: int, bounded: bool) -> tuple[float, float, int]:
    """CPU ms and bytes written per event for `block` events after `size` events of history; state bytes."""
    events = history(size + block)
    raw, _ = replay(events[:size], None, bounded)
    cpu: list[float] = []
    written = 0
    for _ in range(repeats):
        start = time.process_time()
        _, written = replay(events[size:], raw, bounded)
        cpu.append((time.process_time() - start) * 1000 / block)
    return statistics.median(cpu), written / block, len(raw or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--block", type=int, default=10, help="events timed after the history")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for bounded in (True, False):
        label = "bounded" if bounded else "whole history"
        rows = {size: measure(size, args.block, args.repeats, bounded) for size in (10, 100, 1000)}
        print(f"{label}:")
        print(f"  {'history':>8} {'state bytes':>12} {'CPU ms/event':>13} {'bytes written/event':>20}")
        for size, (cpu, per_event, state_bytes) in rows.items():
            print(f"  {size:>8} {state_bytes:>12,} {cpu:>13.2f} {per_event:>20,.0f}")
        print(f"  1,000/10 ratios: CPU {rows[1000][0] / rows[10][0]:.2f}x, bytes {rows[1000][1] / rows[10][1]:.2f}x"
              f" (target <= 1.5x)")


if __name__ == "__main__":
    main()
