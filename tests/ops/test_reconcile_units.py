"""apro_sync/ops/reconcile.py without a broker: the changelog decoding, location selection, the report; peek's shadow
columns."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from foundations.config import Settings
from apro_sync.ops.kafka_io import OperatorError
from apro_sync.ops.peek import Peeked, format_line
from sinks import drift
from apro_sync.ops import reconcile as reconcile_tool
from foundations.formats.crm_commands import UpsertContact
from streams.plan import marks
from streams.plan.state import ClientState, CrmIds, PendingEffects, mark_done


def record(client_id: str, state: ClientState | None) -> tuple[bytes, bytes | None]:
    """As faust.Table writes it: key and value are JSON-encoded strings."""
    value = None if state is None else json.dumps(state.to_json().decode()).encode()
    return json.dumps(client_id).encode(), value


def test_latest_value_per_client_and_tombstones() -> None:
    first = ClientState(client_id="1")
    later = ClientState(client_id="1", crm={"L1": CrmIds(contact_id="c1")})
    states = reconcile_tool.decode_changelog(
        [
            record("1", first),
            record("2", ClientState(client_id="2")),
            record("1", later),
            record("2", None),
            (None, b"x"),
        ]
    )
    assert states == {"1": later}
    assert reconcile_tool.clients_of(states, "L1") == [later] and reconcile_tool.clients_of(states, "L2") == []


def test_done_marks_are_merged_and_never_read_as_a_client() -> None:
    """The sink writes an op's done mark under the client's marks key (streams/plan/marks.py)."""
    op = UpsertContact(op_id="ev-1:upsert_contact:0", event_id="ev-1", client_id="1", location_label="L1")
    planned = ClientState(client_id="1", effects=(PendingEffects(event_id="ev-1", location_label="L1", ops=(op,)),))
    after = mark_done(planned.model_copy(update={"crm": {"L1": CrmIds(contact_id="c1")}}), op.op_id)
    done = marks.encode(marks.add(marks.EMPTY, op, planned, after))
    marks_record = (json.dumps(marks.marks_key("1")).encode(), json.dumps(done).encode())
    assert reconcile_tool.decode_changelog([record("1", planned), marks_record]) == {"1": after}
    cleared = (marks_record[0], None)
    assert reconcile_tool.decode_changelog([record("1", planned), marks_record, record("1", after), cleared]) == {
        "1": after}


def test_location_selection() -> None:
    settings = Settings(_env_file=None, ghl_location_id="L1", ghl_token=SecretStr("pit-token-0123456789"))
    assert [t.ghl_location_id for t in reconcile_tool.select_targets(settings, None)] == ["L1"]
    assert [t.ghl_location_id for t in reconcile_tool.select_targets(settings, "L1")] == ["L1"]
    with pytest.raises(OperatorError, match="no configured GoHighLevel location"):
        reconcile_tool.select_targets(settings, "L9")


def test_report_lines_hold_names_and_counts_only() -> None:
    report = reconcile_tool.LocationReport("Scottsdale", counts=drift.DriftCounts(), calls=40, seconds=2.0)
    report.counts.add([drift.OPP_STAGE, "apro_appt_status"])
    report.counts.add([])
    report.counts.skipped = 3
    report.fixed_clients = 1
    assert report.lines(fix=True) == [
        "location Scottsdale: 2 client(s) compared, 3 skipped (effects pending or no contact), 1 with drift, "
        "2 field(s) drifted",
        "  apro_appt_status: 1",
        "  opportunity.stage: 1",
        "  fixed: 1 client(s)",
        "  40 GoHighLevel call(s), 2.0s, 1.0 clients/s",
    ]


def test_peek_shows_a_shadow_call_and_its_body_only_on_request() -> None:
    headers = {"apro-shadow-method": "PUT", "apro-shadow-path": "/contacts/{contactId}",
               "apro-shadow-location": "L1", "apro-shadow-op": "e1:upsert_contact:0"}
    peeked = Peeked(0, 7, 0, b"48213", b'{"body": {"firstName": "Jane"}}', headers)
    line = format_line(peeked, show_payload=False)
    assert "call=PUT /contacts/{contactId}" in line and "location=L1" in line and "op=e1:upsert_contact:0" in line
    assert "Jane" not in line and "48213" not in line
    assert "Jane" in format_line(peeked, show_payload=True)
