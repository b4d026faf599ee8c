"""sinks/drift.py: what the state says GoHighLevel must show, what differs, and the ops that repair it."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

from sinks import drift
from foundations.formats import crm_fields
from foundations.formats.crm_commands import OpKind
from foundations.formats.normalized import MembershipStatus
from streams.plan.state import (
    ClientState, CrmIds, InvoiceRecord, MembershipRecord, NextVisit, PendingEffects, Register,
)

AT = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
LABEL = "loc1"
FIELD_IDS = {key: f"fid-{i}" for i, key in enumerate(sorted(crm_fields.BY_KEY))}
FIELD_KEYS = {fid: key for key, fid in FIELD_IDS.items()}
STAGES = {"sid-booked": crm_fields.STAGE_BOOKED, "sid-patient": crm_fields.STAGE_PATIENT}


def reg(value: str) -> Register:
    return Register(value=value, at=AT, event_id="e1", seq=1)


def patient_state(**update: object) -> ClientState:
    state = ClientState(
        client_id="48213",
        contact={"firstName": reg("Jane"), "lastName": reg("Doe"), "email": reg("jane@example.com")},
        custom={crm_fields.APRO_CLIENT_ID.key: reg("48213"), crm_fields.LAST_VISIT_DATE.key: reg("2026-11-20"),
                crm_fields.INVOICE_PAID_AMOUNT.key: reg("150.5"), crm_fields.APRO_APPT_STATUS.key: reg("Completed")},
        invoices={"INV-1": InvoiceRecord(id="INV-1", paid_amount=Decimal("150.50"), paid_event_at=AT,
                                         paid_event_id="e1")},
        stage=reg(crm_fields.STAGE_PATIENT), patient=True,
        next_visit=NextVisit(appointment_id="A2", date=date(2026, 12, 3), service="Botox"),
        crm={LABEL: CrmIds(contact_id="c1", opportunity_id="o1")},
    )
    return state.model_copy(update=update)


def contact_for(state: ClientState, **override: object) -> dict[str, object]:
    want = drift.expected(state)
    values = {**want.custom, **override}
    return {"id": "c1", "tags": ["apro-patient"],
            "customFields": [{"id": FIELD_IDS[k], "value": v} for k, v in values.items() if v != ""]}


def opp(stage: str = "sid-patient", status: str = "won", value: object = 150.5) -> dict[str, object]:
    return {"id": "o1", "pipelineStageId": stage, "status": status, "monetaryValue": value}


def observe(contact: dict | None, opportunity: dict | None) -> drift.Observed:
    return drift.observed(contact, opportunity, field_keys=FIELD_KEYS, stage_names=STAGES)


def test_what_the_state_writes_is_no_drift() -> None:
    state = patient_state()
    want = drift.expected(state)
    assert want.custom[crm_fields.PATIENT_LIFETIME_VALUE.key] == "150.50"
    assert want.custom[crm_fields.INVOICE_PAID_AMOUNT.key] == "150.50"
    assert want.custom[crm_fields.NEXT_VISIT_DATE.key] == "2026-12-03"
    assert (want.stage, want.status, want.monetary_value, want.patient_tag) == (crm_fields.STAGE_PATIENT, "won",
                                                                               Decimal("150.50"), True)
    assert drift.drift(want, observe(contact_for(state), opp())) == []


def test_each_owned_field_is_named_when_it_differs() -> None:
    state = patient_state()
    contact = contact_for(state, **{crm_fields.APRO_APPT_STATUS.key: "Booked", crm_fields.LAST_VISIT_DATE.key: "",
                                    crm_fields.PATIENT_LIFETIME_VALUE.key: "99"})
    contact["tags"] = ["vip"]
    names = drift.drift(drift.expected(state), observe(contact, opp(stage="sid-booked", status="lost", value=1)))
    assert names == [
        crm_fields.APRO_APPT_STATUS.key,
        crm_fields.LAST_VISIT_DATE.key,
        crm_fields.PATIENT_LIFETIME_VALUE.key,
        drift.OPP_STAGE,
        drift.OPP_STATUS,
        drift.OPP_VALUE,
        drift.TAG_PATIENT,
    ]


def test_empty_equals_absent_and_formats_are_canonical() -> None:
    state = patient_state(next_visit=None)
    contact = contact_for(state)  # next visit fields "" → not sent at all
    # GoHighLevel may answer dates as epoch milliseconds and money without trailing zeros.
    contact["customFields"] = [e if e["id"] != FIELD_IDS[crm_fields.LAST_VISIT_DATE.key] else
                               {"id": e["id"], "value": "1795132800000"} for e in contact["customFields"]]
    assert drift.drift(drift.expected(state), observe(contact, opp(value="150.5"))) == []


def test_fields_the_state_never_wrote_are_not_compared() -> None:
    state = patient_state()
    contact = contact_for(state, **{crm_fields.APRO_MEMBERSHIP.key: "Old integration's value"})
    assert drift.drift(drift.expected(state), observe(contact, opp())) == []


def test_lead_without_opportunity_value_and_without_tag() -> None:
    state = patient_state(patient=False, invoices={}, stage=reg(crm_fields.STAGE_BOOKED))
    want = drift.expected(state)
    assert (want.status, want.monetary_value, want.patient_tag) == ("open", None, False)
    assert crm_fields.PATIENT_LIFETIME_VALUE.key not in want.custom
    contact = contact_for(state)
    contact["tags"] = []
    assert drift.drift(want, observe(contact, opp(stage="sid-booked", status="open", value=777))) == []
    assert drift.drift(want, observe(contact, None)) == [drift.OPP_STAGE, drift.OPP_STATUS]


def test_missing_contact_and_skipped_clients() -> None:
    state = patient_state()
    assert drift.drift(drift.expected(state), observe(None, None)) == [drift.CONTACT_MISSING]
    assert drift.needs_comparison(state, LABEL)
    assert not drift.needs_comparison(state, "other-location")
    pending = PendingEffects(event_id="e2", location_label=LABEL, ops=())
    assert not drift.needs_comparison(state.model_copy(update={"effects": (pending,)}), LABEL)


def test_repair_ops_write_only_what_drifted() -> None:
    state = patient_state()
    ops = drift.repair_ops(state, LABEL, [crm_fields.APRO_APPT_STATUS.key, drift.OPP_VALUE, drift.TAG_PATIENT], "run1")
    assert [op.kind for op in ops] == [OpKind.UPSERT_CONTACT, OpKind.UPSERT_OPPORTUNITY, OpKind.ADD_TAGS]
    upsert, opportunity, tags = ops
    assert upsert.custom == {crm_fields.APRO_APPT_STATUS.key: "Completed"}
    assert upsert.standard.email == "jane@example.com"  # finds the contact again if it was deleted
    assert (opportunity.stage, opportunity.status, opportunity.monetary_value) == (crm_fields.STAGE_PATIENT, "won",
                                                                                  Decimal("150.50"))
    assert tags.tags == ("apro-patient",)
    assert len({op.op_id for op in ops}) == 3 and all(op.client_id == "48213" for op in ops)
    assert drift.repair_ops(state, LABEL, [drift.TAG_PATIENT], "run1")[0].kind is OpKind.ADD_TAGS
    everything = drift.repair_ops(state, LABEL, [drift.CONTACT_MISSING], "run1")
    assert set(everything[0].custom) == set(drift.expected(state).custom)
    assert everything[0].custom[crm_fields.PATIENT_LIFETIME_VALUE.key] == Decimal("150.50")


def consent_member_state(status: MembershipStatus) -> ClientState:
    """Opted out of email, in for SMS, silent on calls; one membership."""
    member = MembershipRecord(id="M1", name="Glow Club", status=status, last_event_at=AT, last_event_id="m1",
                              last_event_seq=2)
    return patient_state(consent={"Email": reg("opt_out"), "SMS": reg("opt_in")}, memberships={"M1": member})


def test_dnd_per_channel_and_the_member_tag() -> None:
    state = consent_member_state(MembershipStatus.ACTIVE)
    want = drift.expected(state)
    assert (dict(want.dnd), want.member_tag) == ({"Email": "active", "SMS": "inactive"}, True)
    contact = contact_for(state)
    contact["tags"] = ["apro-patient", "apro-member"]
    contact["dndSettings"] = {"Email": {"status": "active", "message": "x"}, "Call": {"status": "active"}}
    # An absent SMS setting is not DND, as the state wants; Call is not the state's to compare.
    assert drift.drift(want, observe(contact, opp())) == []
    contact["dndSettings"] = {"Email": {"status": "permanent"}, "SMS": {"status": "active"}}
    contact["tags"] = ["apro-patient"]
    assert drift.drift(want, observe(contact, opp())) == ["dnd.SMS", drift.TAG_MEMBER]
    contact["dndSettings"] = {"Email": {"status": "inactive"}}
    assert drift.drift(want, observe(contact, opp())) == ["dnd.Email", drift.TAG_MEMBER]


def test_an_ended_membership_does_not_require_the_sticky_tag() -> None:
    state = consent_member_state(MembershipStatus.CANCELLED)
    contact = contact_for(state)
    contact["dndSettings"] = {"Email": {"status": "active"}}
    assert not drift.expected(state).member_tag
    assert drift.drift(drift.expected(state), observe(contact, opp())) == []


def test_repair_ops_for_dnd_and_member_tag() -> None:
    state = consent_member_state(MembershipStatus.ACTIVE)
    upsert, tags = drift.repair_ops(state, LABEL, ["dnd.SMS", drift.TAG_MEMBER], "run1")
    assert upsert.kind is OpKind.UPSERT_CONTACT and (upsert.custom, upsert.dnd) == ({}, {"SMS": "inactive"})
    assert upsert.dnd_settings() == {"SMS": {"status": "inactive"}}
    assert tags.tags == ("apro-member",)
    both = drift.repair_ops(state, LABEL, [drift.TAG_PATIENT, drift.TAG_MEMBER], "run1")
    assert [op.tags for op in both] == [("apro-patient", "apro-member")]
    everything = drift.repair_ops(state, LABEL, [drift.CONTACT_MISSING], "run1")
    assert everything[0].dnd == {"Email": "active", "SMS": "inactive"}
    assert everything[-1].tags == ("apro-patient", "apro-member")


def test_counts() -> None:
    counts = drift.DriftCounts()
    counts.add([])
    counts.add([drift.OPP_STAGE, drift.TAG_PATIENT])
    counts.add([drift.OPP_STAGE])
    assert (counts.clients, counts.drifted_clients, counts.total) == (3, 2, 3)
    assert counts.fields == {drift.OPP_STAGE: 2, drift.TAG_PATIENT: 1}
