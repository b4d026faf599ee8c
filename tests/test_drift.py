"""sinks/drift.py: what the state says GoHighLevel must show, what differs, and the ops that repair it."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

from sinks import drift as D
from streams import crm_fields as F
from streams.crm_ops import OpKind
from streams.state import ClientState, CrmIds, InvoiceRecord, NextVisit, PendingEffects, Register

AT = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
LABEL = "loc1"
FIELD_IDS = {key: f"fid-{i}" for i, key in enumerate(sorted(F.BY_KEY))}
FIELD_KEYS = {fid: key for key, fid in FIELD_IDS.items()}
STAGES = {"sid-booked": F.STAGE_BOOKED, "sid-patient": F.STAGE_PATIENT}


def reg(value: str) -> Register:
    return Register(value=value, at=AT, event_id="e1", seq=1)


def patient_state(**update: object) -> ClientState:
    state = ClientState(
        client_id="48213",
        contact={"firstName": reg("Jane"), "lastName": reg("Doe"), "email": reg("jane@example.com")},
        custom={F.APRO_CLIENT_ID.key: reg("48213"), F.LAST_VISIT_DATE.key: reg("2026-11-20"),
                F.INVOICE_PAID_AMOUNT.key: reg("150.5"), F.APRO_APPT_STATUS.key: reg("Completed")},
        invoices={"INV-1": InvoiceRecord(id="INV-1", paid_amount=Decimal("150.50"), paid_event_at=AT,
                                         paid_event_id="e1")},
        stage=reg(F.STAGE_PATIENT), patient=True,
        next_visit=NextVisit(appointment_id="A2", date=date(2026, 12, 3), service="Botox"),
        crm={LABEL: CrmIds(contact_id="c1", opportunity_id="o1")},
    )
    return state.model_copy(update=update)


def contact_for(state: ClientState, **override: object) -> dict[str, object]:
    want = D.expected(state)
    values = {**want.custom, **override}
    return {"id": "c1", "tags": ["apro-patient"],
            "customFields": [{"id": FIELD_IDS[k], "value": v} for k, v in values.items() if v != ""]}


def opp(stage: str = "sid-patient", status: str = "won", value: object = 150.5) -> dict[str, object]:
    return {"id": "o1", "pipelineStageId": stage, "status": status, "monetaryValue": value}


def observe(contact: dict | None, opportunity: dict | None) -> D.Observed:
    return D.observed(contact, opportunity, field_keys=FIELD_KEYS, stage_names=STAGES)


def test_what_the_state_writes_is_no_drift() -> None:
    state = patient_state()
    want = D.expected(state)
    assert want.custom[F.PATIENT_LIFETIME_VALUE.key] == "150.50"
    assert want.custom[F.INVOICE_PAID_AMOUNT.key] == "150.50"
    assert want.custom[F.NEXT_VISIT_DATE.key] == "2026-12-03"
    assert (want.stage, want.status, want.monetary_value, want.patient_tag) == (F.STAGE_PATIENT, "won",
                                                                               Decimal("150.50"), True)
    assert D.drift(want, observe(contact_for(state), opp())) == []


def test_each_owned_field_is_named_when_it_differs() -> None:
    state = patient_state()
    contact = contact_for(state, **{F.APRO_APPT_STATUS.key: "Booked", F.LAST_VISIT_DATE.key: "",
                                    F.PATIENT_LIFETIME_VALUE.key: "99"})
    contact["tags"] = ["vip"]
    names = D.drift(D.expected(state), observe(contact, opp(stage="sid-booked", status="lost", value=1)))
    assert names == [F.APRO_APPT_STATUS.key, F.LAST_VISIT_DATE.key, F.PATIENT_LIFETIME_VALUE.key,
                     D.OPP_STAGE, D.OPP_STATUS, D.OPP_VALUE, D.TAG_PATIENT]


def test_empty_equals_absent_and_formats_are_canonical() -> None:
    state = patient_state(next_visit=None)
    contact = contact_for(state)  # next visit fields "" → not sent at all
    # GoHighLevel may answer dates as epoch milliseconds and money without trailing zeros.
    contact["customFields"] = [e if e["id"] != FIELD_IDS[F.LAST_VISIT_DATE.key] else
                               {"id": e["id"], "value": "1795132800000"} for e in contact["customFields"]]
    assert D.drift(D.expected(state), observe(contact, opp(value="150.5"))) == []


def test_fields_the_state_never_wrote_are_not_compared() -> None:
    state = patient_state()
    contact = contact_for(state, **{F.APRO_MEMBERSHIP.key: "Old integration's value"})
    assert D.drift(D.expected(state), observe(contact, opp())) == []


def test_lead_without_opportunity_value_and_without_tag() -> None:
    state = patient_state(patient=False, invoices={}, stage=reg(F.STAGE_BOOKED))
    want = D.expected(state)
    assert (want.status, want.monetary_value, want.patient_tag) == ("open", None, False)
    assert F.PATIENT_LIFETIME_VALUE.key not in want.custom
    contact = contact_for(state)
    contact["tags"] = []
    assert D.drift(want, observe(contact, opp(stage="sid-booked", status="open", value=777))) == []
    assert D.drift(want, observe(contact, None)) == [D.OPP_STAGE, D.OPP_STATUS]


def test_missing_contact_and_skipped_clients() -> None:
    state = patient_state()
    assert D.drift(D.expected(state), observe(None, None)) == [D.CONTACT_MISSING]
    assert D.needs_comparison(state, LABEL)
    assert not D.needs_comparison(state, "other-location")
    pending = PendingEffects(event_id="e2", location_label=LABEL, ops=())
    assert not D.needs_comparison(state.model_copy(update={"effects": (pending,)}), LABEL)


def test_repair_ops_write_only_what_drifted() -> None:
    state = patient_state()
    ops = D.repair_ops(state, LABEL, [F.APRO_APPT_STATUS.key, D.OPP_VALUE, D.TAG_PATIENT], "run1")
    assert [op.kind for op in ops] == [OpKind.UPSERT_CONTACT, OpKind.UPSERT_OPPORTUNITY, OpKind.ADD_TAGS]
    upsert, opportunity, tags = ops
    assert upsert.custom == {F.APRO_APPT_STATUS.key: "Completed"}
    assert upsert.standard.email == "jane@example.com"  # finds the contact again if it was deleted
    assert (opportunity.stage, opportunity.status, opportunity.monetary_value) == (F.STAGE_PATIENT, "won",
                                                                                  Decimal("150.50"))
    assert tags.tags == ("apro-patient",)
    assert len({op.op_id for op in ops}) == 3 and all(op.client_id == "48213" for op in ops)
    assert D.repair_ops(state, LABEL, [D.TAG_PATIENT], "run1")[0].kind is OpKind.ADD_TAGS
    everything = D.repair_ops(state, LABEL, [D.CONTACT_MISSING], "run1")
    assert set(everything[0].custom) == set(D.expected(state).custom)
    assert everything[0].custom[F.PATIENT_LIFETIME_VALUE.key] == Decimal("150.50")


def test_counts() -> None:
    counts = D.DriftCounts()
    counts.add([])
    counts.add([D.OPP_STAGE, D.TAG_PATIENT])
    counts.add([D.OPP_STAGE])
    assert (counts.clients, counts.drifted_clients, counts.total) == (3, 2, 3)
    assert counts.fields == {D.OPP_STAGE: 2, D.TAG_PATIENT: 1}
