"""Backfill without a broker: reading the export fixtures and their spelling variants, the historical events built
from them (order, deterministic ids), what the real normalizer and planner make of them, checkpoint and pacing."""

from __future__ import annotations

import csv
import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from apro_sync.ops import backfill as backfill_mod
from apro_sync.ops.backfill_events import EventBuilder, expected_lifetime_value
from apro_sync.ops.backfill_exports import (
    APPOINTMENT_COLUMNS,
    CLIENT_COLUMNS,
    INVOICE_COLUMNS,
    Export,
    ExportError,
    header_map,
    read_export,
)
from foundations.config import Settings
from foundations.formats.crm_commands import AddNote, AddTags, EnrollWorkflow, UpsertOpportunity
from foundations.formats.normalized import NormalizedEvent
from streams.normalize.rules import normalize
from streams.plan.planner import plan
from tests.conftest import REPO

EXPORTS = REPO / "examples" / "exports"
PHOENIX = ZoneInfo("America/Phoenix")
AS_OF = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _read(clients: str | None, appointments: str | None, invoices: str | None) -> Export:
    return read_export(*(EXPORTS / n if n else None for n in (clients, appointments, invoices)), tz=PHOENIX)


# ------------------------------------------------------------------------------------------------ fixtures


def test_fixture_exports_read_every_variant() -> None:
    export = _read("clients.csv", "appointments.csv", "invoices.csv")
    assert export.rejects == [] and export.lenient == {}
    jane, omar, lena = export.clients
    assert (jane.client_id, jane.email, jane.phone, jane.date_of_birth) == (
        "48213", "jane.doe@example.com", "+14805550134", date(1985, 3, 14))  # trimmed, lower-cased, E.164
    assert (omar.email, omar.phone, omar.date_of_birth) == (None, "+14805550199", date(1979, 11, 2))
    assert lena.phone is None and lena.date_of_birth is None
    by_id = {a.appointment_id: a for a in export.appointments}
    # Separate date and "2:00 PM" columns, naive local (Phoenix, UTC-7); ColdFusion dates; status words.
    assert by_id["A-77120"].start == datetime(2025, 12, 3, 21, 0, tzinfo=timezone.utc)
    assert by_id["A-77120"].status == "completed"
    assert by_id["A-77121"].status == "booked" and by_id["A-77121"].start.year == 2027
    assert by_id["A-77122"].start == datetime(2026, 3, 2, 23, 0, tzinfo=timezone.utc)
    assert by_id["A-77122"].status == "no_show" and by_id["A-77123"].status == "cancelled"
    invoices = {i.invoice_id: i for i in export.invoices}
    assert invoices["INV-10442"].amount_paid == Decimal("1150.00")  # "$1,150.00"
    assert invoices["INV-10444"].status == "refunded" and invoices["INV-10444"].refunded == Decimal("100.00")
    assert invoices["INV-10445"].status == "voided" and invoices["INV-10446"].status == "open"
    assert expected_lifetime_value(export) == {"48213": Decimal("1246.50"), "48214": Decimal("150.00"),
                                               "48215": Decimal("0.00")}


def test_fixture_exports_other_dialects() -> None:
    """Semicolons and UPPERCASE, snake_case, tabs; status words `checked_out`, `late cancel`, `paid in full`."""
    export = _read("clients_coldfusion_style.csv", "appointments_snake_case.csv", "invoices_uppercase.csv")
    assert export.rejects == []
    (maya,) = export.clients
    assert (maya.client_id, maya.phone, maya.date_of_birth) == ("48216", "+14805550177", date(1990, 7, 4))
    filler, late = export.appointments
    assert filler.status == "completed" and late.status == "cancelled"
    assert late.changed_at == datetime(2026, 5, 30, 15, 0, tzinfo=timezone.utc)
    (invoice,) = export.invoices
    assert (invoice.appointment_id, invoice.amount_paid, invoice.status) == ("A-80001", Decimal("2400.00"), "paid")


def test_bad_rows_are_rejected_by_row_and_column_without_values(tmp_path: Path) -> None:
    path = tmp_path / "invoices.csv"
    path.write_text("Invoice ID,Client ID,Paid Date,Amount Paid\n"
                    "I1,C1,2026-01-01 10:00,12.00\n"
                    ",C1,2026-01-01 10:00,12.00\n"
                    "I3,C1,not-a-date-secret,12.00\n"
                    "I4,C1,2026-01-01 10:00,twelve-secret\n"
                    "I5,C1,2026-01-01 10:00,-5.00\n")
    export = read_export(None, None, path, tz=PHOENIX)
    assert [i.invoice_id for i in export.invoices] == ["I1"]
    assert [(r.row, r.column) for r in export.rejects] == [(2, "invoice_id"), (3, "paid_at"), (4, "amount_paid"),
                                                           (5, "amount_paid")]
    assert not any("secret" in r.reason for r in export.rejects)


def test_a_missing_required_column_stops_the_read(tmp_path: Path) -> None:
    path = tmp_path / "appointments.csv"
    path.write_text("Appointment ID,Start\nA1,2026-01-01 10:00\n")
    with pytest.raises(ExportError, match="client_id"):
        read_export(None, path, None, tz=PHOENIX)


def test_a_windows_1252_export_keeps_its_accents(tmp_path: Path) -> None:
    path = tmp_path / "clients.csv"
    path.write_bytes("Client ID,First Name,Email\nC1,Zoë,zoe@example.com\n".encode("cp1252"))
    assert [c.first_name for c in read_export(path, None, None, tz=PHOENIX).clients] == ["Zoë"]
    path.write_bytes("\ufeffClient ID,First Name\nC1,Zoë\n".encode("utf-8"))
    assert [c.first_name for c in read_export(path, None, None, tz=PHOENIX).clients] == ["Zoë"]


def test_lenient_fields_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "clients.csv"
    path.write_text("Client ID,Email,Phone,DOB\nC1,not an email,12,31/31/1990\nC2,a@example.com,,\n")
    export = read_export(path, None, None, tz=PHOENIX)
    assert [c.email for c in export.clients] == [None, "a@example.com"]
    assert export.lenient == {"clients.email": 1, "clients.phone": 1, "clients.date_of_birth": 1}


# -------------------------------------------------------------------------- property: spellings read the same


def _respell(name: str, rnd: random.Random) -> str:
    """Another accepted spelling of a header: case per character, and any separators between words."""
    words = name.replace("_", " ").split()
    sep = rnd.choice([" ", "_", "", "-", "  ", " _ "])
    text = sep.join(words)
    text = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in text)
    return (" " if rnd.random() < 0.2 else "") + text + (" " if rnd.random() < 0.2 else "")


RESOURCE_ROWS = {
    "clients": (CLIENT_COLUMNS, {"client_id": "C9", "first_name": "Ana", "email": " Ana@Example.com",
                                 "phone": "480-555-0101", "date_of_birth": "02/03/1991", "location_id": "3"}),
    "appointments": (APPOINTMENT_COLUMNS, {"appointment_id": "A9", "client_id": "C9", "start": "12/03/2026 14:00",
                                           "status": "Confirmed", "services": "Botox", "provider": "Dr. Lee"}),
    "invoices": (INVOICE_COLUMNS, {"invoice_id": "I9", "client_id": "C9", "paid_at": "2026-12-03 15:09:00",
                                   "amount_paid": "$1,150.00", "status": "PAID", "items": "Botox"}),
}


@pytest.mark.parametrize("resource", sorted(RESOURCE_ROWS))
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_any_accepted_spelling_of_a_header_reads_the_same(resource: str, seed: int, tmp_path: Path) -> None:
    columns, values = RESOURCE_ROWS[resource]
    rnd = random.Random(seed)
    reference = list(values)
    spelled = [_respell(rnd.choice((column, *columns[column])), rnd) for column in reference]
    order = list(range(len(reference)))
    rnd.shuffle(order)
    mapped = header_map(resource, [spelled[i] for i in order])
    assert {column: order[i] for column, i in mapped.items()} == {c: i for i, c in enumerate(reference)}

    def read(headers: list[str], row: list[str]) -> Export:
        path = tmp_path / f"{resource}-{seed}-{len(headers[0])}.csv"
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([headers, row])
        args = {"clients": (path, None, None), "appointments": (None, path, None),
                "invoices": (None, None, path)}[resource]
        return read_export(*args, tz=PHOENIX)

    canonical = read(reference, [values[c] for c in reference])
    respelled = read([spelled[i] for i in order], [values[reference[i]] for i in order])
    assert respelled == canonical and not canonical.rejects


# -------------------------------------------------------------------------------------------- the events


def _events(export: Export, as_of: datetime = AS_OF) -> dict[str, list[backfill_mod.HistoricalEvent]]:
    return EventBuilder(export, as_of=as_of, tz=PHOENIX).by_client()


def test_events_are_per_client_in_time_order_with_ids_that_do_not_depend_on_the_run() -> None:
    export = _read("clients.csv", "appointments.csv", "invoices.csv")
    first = _events(export)
    for events in first.values():
        assert [e.sort_key for e in events] == sorted(e.sort_key for e in events)
    later = _events(_read("clients.csv", "appointments.csv", "invoices.csv"), AS_OF + timedelta(days=3))
    assert {cid: [e.event_id for e in evs] for cid, evs in first.items()} == \
        {cid: [e.event_id for e in evs] for cid, evs in later.items()}
    ids = [e.event_id for evs in first.values() for e in evs]
    assert len(ids) == len(set(ids))
    # Jane: client, completed booking, two paid invoices; the future booking is capped at the export time.
    assert [e.kind for e in first["48213"]] == ["appointment", "paid", "paid", "client", "appointment"]
    # Omar: a refund after the paid event; Lena: a void; the open invoice gives nothing.
    assert [e.kind for e in first["48214"]] == ["paid", "reversal", "appointment", "client"]
    assert [e.kind for e in first["48215"]] == ["paid", "reversal", "appointment", "client"]


def _run(events: list[backfill_mod.HistoricalEvent], historical: bool = True) -> tuple[object, list]:
    headers = {"apro-backfill": "1"} if historical else {}
    state, ops = None, []
    for offset, event in enumerate(events):
        result = normalize(event.body, headers)
        assert isinstance(result, NormalizedEvent), result
        assert result.historical is historical
        planned = plan(result.model_copy(update={"raw_offset": offset}), state, location_label="L", now=event.at,
                       default_timezone="America/Phoenix")
        state = planned.new_state
        ops.extend(planned.ops)
    return state, ops


def test_historical_events_set_the_truth_without_live_only_effects() -> None:
    export = _read("clients.csv", "appointments.csv", "invoices.csv")
    by_client = _events(export)
    state, ops = _run(by_client["48213"])
    assert state.lifetime_value == Decimal("1246.50")
    assert state.custom["last_visit_date"].value == "2025-12-05"  # the retail invoice's paid date
    assert state.next_visit is not None and state.next_visit.date == date(2027, 1, 15)
    assert state.stage.value == "Booked"  # the future booking: the next visit is real follow-up
    assert not [op for op in ops if isinstance(op, (AddNote, EnrollWorkflow))]
    assert [op.tags for op in ops if isinstance(op, AddTags)] == [("apro-patient",)]  # once, not per invoice
    # The same events live: notes, workflows, a tag per invoice.
    _, live_ops = _run(by_client["48213"], historical=False)
    assert sum(isinstance(op, AddNote) for op in live_ops) == 4
    assert sum(isinstance(op, EnrollWorkflow) for op in live_ops) >= 4
    assert sum(isinstance(op, AddTags) for op in live_ops) == 2


def test_a_patients_past_no_show_does_not_move_the_stage_back() -> None:
    export = _read("clients.csv", "appointments.csv", "invoices.csv")
    state, ops = _run(_events(export)["48214"])  # paid (Jan), refund, no-show (March), client
    assert state.stage.value == "Patient"
    assert state.lifetime_value == Decimal("150.00")
    assert [op.stage for op in ops if isinstance(op, UpsertOpportunity)] == ["Patient", "Patient"]
    _, live_ops = _run(_events(export)["48214"], historical=False)
    assert [op.stage for op in live_ops if isinstance(op, UpsertOpportunity)][-1] == "Cancel/No-Show"


def test_a_repeated_event_is_a_duplicate_for_the_planner() -> None:
    export = _read("clients.csv", "appointments.csv", "invoices.csv")
    events = _events(export)["48213"]
    state, _ = _run(events)
    for offset, event in enumerate(events):
        result = normalize(event.body, {"apro-backfill": "1"})
        again = plan(result.model_copy(update={"raw_offset": offset}), state, location_label="L", now=event.at)
        assert again.ops == () and again.outcome.value in ("duplicate", "stale", "repeated_invoice")


def test_dry_run_counts_per_location() -> None:
    request = backfill_mod.BackfillRequest(EXPORTS / "clients.csv", EXPORTS / "appointments.csv",
                                           EXPORTS / "invoices.csv", as_of=AS_OF)
    settings = Settings(_env_file=None)
    prepared = backfill_mod.prepare(request, settings)
    counts = backfill_mod.dry_run(prepared, settings, lambda loc: f"ghl-{loc}")
    assert list(counts) == ["ghl-3"]
    c = counts["ghl-3"]
    assert c.events == sum(len(v) for v in prepared.by_client.values()) == 13
    assert (c.contacts_created, c.notes, c.enrollments, c.tags, c.unreadable, c.skipped) == (3, 0, 0, 3, 0, 0)
    assert c.opportunities_created == 3
    searches = 2 + 1 + 1  # Jane has email and phone, Omar a phone, Lena an email
    assert c.calls == c.contacts_created + c.contacts_updated + 2 * c.opportunities_created + \
        c.opportunities_updated + c.tags + searches
    assert "@" not in c.line() and "Jane" not in c.line()


def test_checkpoint_is_atomic_and_belongs_to_one_export(tmp_path: Path) -> None:
    checkpoint = backfill_mod.Checkpoint(tmp_path, "abc")
    assert checkpoint.load() == 0
    checkpoint.save(500, 1200)
    assert backfill_mod.Checkpoint(tmp_path, "abc").load() == 500
    assert not list(tmp_path.glob("*.tmp"))
    other = backfill_mod.Checkpoint(tmp_path, "abd")
    other.path.write_text(checkpoint.path.read_text())
    with pytest.raises(backfill_mod.BackfillError, match="another export"):
        other.load()


def test_fingerprint_changes_with_the_files_and_the_location(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("Client ID\n1\n")
    first = backfill_mod.fingerprint([path, None, None], None)
    assert backfill_mod.fingerprint([path, None, None], None) == first
    assert backfill_mod.fingerprint([path, None, None], "3") != first
    path.write_text("Client ID\n2\n")
    assert backfill_mod.fingerprint([path, None, None], None) != first


def test_pacer_spends_the_share_of_the_budget_per_location() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    pacer = backfill_mod.Pacer(5.0, sleep=sleep, clock=lambda: clock[0])
    for _ in range(11):
        pacer.take("A", 5)  # 1 s of budget each
    pacer.take("B", 5)  # another location has its own budget
    assert clock[0] == pytest.approx(10.0) and sum(slept) == pytest.approx(10.0)
    unpaced = backfill_mod.Pacer(0.0, sleep=sleep, clock=lambda: clock[0])
    unpaced.take("A", 1000)
    assert clock[0] == pytest.approx(10.0)


def test_pacer_waits_for_the_next_utc_day_once_the_daily_share_is_spent() -> None:
    wall = [86_400.0 * 20_000 + 3_600]  # 01:00 UTC
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        wall[0] += s

    pacer = backfill_mod.Pacer(1e9, sleep=sleep, clock=lambda: wall[0], per_day=10, wall=lambda: wall[0])
    for _ in range(5):
        pacer.take("A", 2)
    assert slept == []
    pacer.take("A", 2)  # the 11th and 12th call of the day
    assert wall[0] == 86_400.0 * 20_001  # waited until midnight
    pacer.take("B", 10)  # another location's day is its own
    assert wall[0] == 86_400.0 * 20_001


def test_eta_is_the_slowest_locations_calls_over_its_rate() -> None:
    budget = backfill_mod.Budget(share=0.5, calls={"A": 1000, "B": 3000})
    assert budget.rate_per_s == 5.0 and budget.eta_s() == 600.0
    assert backfill_mod.Budget(share=0.0, calls={"A": 1000}).eta_s() == 100.0
    # Past the daily share (100,000 a day at 0.5), whole days: 250,000 calls = 2 days + 50,000 / 5 per s.
    assert backfill_mod.Budget(share=0.5, calls={"A": 250_000}).eta_s() == 2 * 86_400 + 10_000
    assert backfill_mod.format_duration(93_784) == "1d02h03m"


def test_pacing_and_eta_never_exceed_what_the_worker_leaves_a_backfill() -> None:
    """The worker's limiter keeps APRO_GHL_LIVE_RESERVE of the burst for live calls: a backfill paced above the rest
    would only queue, and its ETA would be early. Below the ceiling the share decides; unpaced drains at it."""
    assert backfill_mod.Budget(share=1.0, calls={"A": 800}, ceiling=0.8).rate_per_s == 8.0
    assert backfill_mod.Budget(share=0.0, calls={"A": 800}, ceiling=0.8).eta_s() == 100.0
    assert backfill_mod.Budget(share=0.5, calls={"A": 800}, ceiling=0.8).rate_per_s == 5.0
