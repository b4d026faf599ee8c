"""Issue 12, items 2 and 3: marketing consent (GoHighLevel DND per channel) and memberships.

Normalizer rules for the payload variants (examples/webhooks/README.md), planner rules (docs/sync-rules.md,
"Marketing consent" and "Memberships") with fixed-seed property tests, and the executor against the emulator."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from foundations.formats.crm_commands import (
    MEMBER_TAG,
    AddNote,
    AddTags,
    EnrollWorkflow,
    UpsertContact,
    UpsertOpportunity,
)
from foundations.formats.normalized import (
    Client,
    Consent,
    EventKind,
    Membership,
    MembershipStatus,
    NormalizedEvent,
    Skipped,
    SkipReason,
    Unreadable,
)
from streams.normalize.rules import normalize
from streams.plan.planner import Outcome, current_membership, plan
from streams.plan.state import ClientState
from tests.streams.plan.test_planner import JANE, LABEL, NOW, PHX, booked, run, t, with_offset

PROPERTY = hsettings(max_examples=200, deadline=None, derandomize=True, database=None)
CLIENT = {"clientId": "48213", "email": "a@example.com"}


def norm(body: dict[str, Any], **headers: str) -> NormalizedEvent | Skipped | Unreadable:
    return normalize(json.dumps(body).encode(), headers)


# ------------------------------------------------------------------ normalizer: consent variants


@pytest.mark.parametrize("client_fields, expected", [
    ({"emailOptOut": True}, (True, None, None)),
    ({"email_opt_out": "Y"}, (True, None, None)),
    ({"OptOutEmail": "yes"}, (True, None, None)),
    ({"EMAILOPTOUT": 1}, (True, None, None)),
    ({"emailOptOut": "N", "smsOptOut": "true", "doNotCall": "0"}, (False, True, False)),
    ({"email_opt_in": False}, (True, None, None)),
    ({"allowText": "No", "allowCalls": "Yes"}, (None, True, False)),
    ({"marketing": {"email": False, "sms": True}}, (True, False, None)),
    ({"marketingPreferences": {"EMAIL": "N", "TEXT": "Y", "PHONE": 0}}, (True, False, True)),
    ({"communication_preferences": {"emailOptOut": "Y"}}, (True, None, None)),
    ({"optOut": {"sms": True, "call": False}}, (None, True, False)),
    ({"doNotContact": True}, (True, True, True)),
    ({"doNotContact": True, "emailOptIn": True}, (False, True, True)),  # the specific flag wins over the global
    ({"emailOptOut": True, "emailOptIn": True}, (True, None, None)),  # conflicting: the opt-out flag decides
    ({"emailOptOut": ""}, (None, None, None)),  # blank: not said
])
def test_consent_spellings(client_fields: dict[str, Any], expected: tuple[bool | None, ...]) -> None:
    result = norm({"event": "client.updated", "client": {**CLIENT, **client_fields}})
    assert isinstance(result, NormalizedEvent) and result.invalid_fields == ()
    consent = result.client.consent
    got = (consent.email_opt_out, consent.sms_opt_out, consent.call_opt_out) if consent else (None, None, None)
    assert got == expected


def test_consent_flat_body_and_on_any_event() -> None:
    flat = norm({"clientId": 5, "email": "a@example.com", "sms_opt_out": "Y"}, **{"apro-resource": "clients"})
    assert flat.client.consent == Consent(sms_opt_out=True)
    appt = norm({"event": "appointment.created", "client": {**CLIENT, "emailOptOut": "Y"},
                 "appointment": {"id": "A1"}})
    assert appt.kind is EventKind.APPOINTMENT_BOOKED and appt.client.consent == Consent(email_opt_out=True)


def test_unreadable_consent_flag_is_lenient_and_named_without_its_value() -> None:
    result = norm({"event": "client.updated", "client": {**CLIENT, "emailOptOut": "maybe-later", "smsOptOut": 7}})
    assert isinstance(result, NormalizedEvent) and result.client.consent is None
    assert result.invalid_fields == ("client.consent.email", "client.consent.sms")
    assert "maybe" not in repr(result.invalid_fields)


# ------------------------------------------------------------------ normalizer: membership kinds


@pytest.mark.parametrize("envelope, kind", [
    ({"event": "membership.created"}, EventKind.MEMBERSHIP_CREATED),
    ({"eventType": "MembershipCreated"}, EventKind.MEMBERSHIP_CREATED),
    ({"event": "membership_purchased"}, EventKind.MEMBERSHIP_CREATED),
    ({"event": "Membership.Renewed"}, EventKind.MEMBERSHIP_RENEWED),
    ({"type": "membership", "action": "auto_renewed"}, EventKind.MEMBERSHIP_RENEWED),
    ({"event": "membership.canceled"}, EventKind.MEMBERSHIP_CANCELLED),
    ({"event": "MembershipCancelled"}, EventKind.MEMBERSHIP_CANCELLED),
    ({"event": "membership.expired"}, EventKind.MEMBERSHIP_EXPIRED),
    ({"event": "membership.lapsed"}, EventKind.MEMBERSHIP_EXPIRED),
    ({"event": "subscription.cancelled"}, EventKind.MEMBERSHIP_CANCELLED),
    ({"event": "membership.updated", "_status": "Canceled"}, EventKind.MEMBERSHIP_CANCELLED),
    ({"event": "membership.updated", "_status": "EXPIRED"}, EventKind.MEMBERSHIP_EXPIRED),
    ({"_status": "expired", "_resource": "memberships"}, EventKind.MEMBERSHIP_EXPIRED),
])
def test_membership_kind_spellings(envelope: dict[str, Any], kind: EventKind) -> None:
    env = dict(envelope)
    status = env.pop("_status", None)
    resource = env.pop("_resource", "")
    block = {"id": 9, "name": "Glow Club", **({"status": status} if status else {})}
    result = norm({**env, "client": CLIENT, "membership": block}, **{"apro-resource": resource})
    assert isinstance(result, NormalizedEvent), result
    assert result.kind is kind and result.membership is not None and result.membership.id == "9"
    expected_status = {EventKind.MEMBERSHIP_CREATED: "Active", EventKind.MEMBERSHIP_RENEWED: "Active",
                       EventKind.MEMBERSHIP_CANCELLED: "Cancelled", EventKind.MEMBERSHIP_EXPIRED: "Expired"}[kind]
    assert result.membership.status.value == expected_status and result.membership.name == "Glow Club"


def test_membership_rules_contact_ids_and_dates() -> None:
    # An update of an active membership names nothing we act on: skipped, visibly.
    skipped = norm({"event": "membership.updated", "client": CLIENT, "membership": {"id": 9, "status": "Active"}})
    assert isinstance(skipped, Skipped) and skipped.reason is SkipReason.UNHANDLED_KIND
    # Created needs a way to reach the contact; cancelled / expired only touch an existing one.
    no_contact = {"clientId": "48213"}
    created = norm({"event": "membership.created", "client": no_contact, "membership": {"id": 9}})
    assert isinstance(created, Skipped) and created.reason is SkipReason.NO_CONTACT_INFO
    cancelled = norm({"event": "membership.cancelled", "client": no_contact, "membership": {"id": 9}})
    assert isinstance(cancelled, NormalizedEvent) and cancelled.kind is EventKind.MEMBERSHIP_CANCELLED
    # Strict: the membership id and its dates.
    missing = norm({"event": "membership.created", "client": CLIENT, "membership": {"name": "Glow"}})
    assert isinstance(missing, Unreadable) and missing.reason == "membership.id: missing"
    bad = norm({"event": "membership.renewed", "client": CLIENT,
                "membership": {"id": 9, "renewalDate": "someday 2027-ish"}})
    assert isinstance(bad, Unreadable) and bad.reason.startswith("membership.renewal_date:")
    assert "someday" not in bad.reason
    # A renewal date is a calendar date, never shifted through a zone.
    late = norm({"event": "membership.renewed", "client": CLIENT,
                 "membership": {"id": 9, "renewalDate": "2027-01-15T23:30:00-07:00"}})
    assert late.membership.renewal_date == date(2027, 1, 15)


# ------------------------------------------------------------------ planner: consent


def client_event(eid: str, at: datetime, offset: int | None = None, **consent: bool | None) -> NormalizedEvent:
    ev = NormalizedEvent(event_id=eid, kind=EventKind.CLIENT_UPSERTED, occurred_at=at, location=PHX,
                         client=JANE.model_copy(update={"consent": Consent(**consent)}))
    return with_offset(ev, offset) if offset is not None else ev


def dnd(p: Any) -> dict[str, str]:
    (op,) = [o for o in p.ops if isinstance(o, UpsertContact)]
    return op.dnd


def test_opt_out_becomes_dnd_per_channel_and_is_reasserted_by_later_events() -> None:
    final, plans = run([client_event("c1", t(1), email_opt_out=True, sms_opt_out=False),
                        booked("b1", t(2))])
    assert dnd(plans[0]) == {"Email": "active", "SMS": "inactive"}  # Call: never said, left alone
    (up,) = [o for o in plans[0].ops if isinstance(o, UpsertContact)]
    assert up.dnd_settings() == {"Email": {"status": "active", "message": "Opted out in AestheticsPro"},
                                 "SMS": {"status": "inactive"}}
    assert dnd(plans[1]) == {"Email": "active", "SMS": "inactive"}  # absolute: every upsert carries the truth
    assert final is not None and {k: r.value for k, r in final.consent.items()} == {"Email": "opt_out",
                                                                                     "SMS": "opt_in"}


def test_an_older_event_never_undoes_an_opt_out() -> None:
    opt_out = client_event("out", t(5), email_opt_out=True)
    stale_client = client_event("in-old", t(3), email_opt_out=False)
    stale_booking = booked("b-old", t(4)).model_copy(
        update={"client": JANE.model_copy(update={"consent": Consent(email_opt_out=False)})})
    final, plans = run([opt_out, stale_client, stale_booking])
    assert plans[1].outcome is Outcome.STALE and plans[1].ops == ()
    # The booking itself applies (its appointment is new), but its older opt-in does not.
    assert plans[2].outcome is Outcome.APPLIED and dnd(plans[2]) == {"Email": "active"}
    assert final.consent["Email"].value == "opt_out" and final.consent["Email"].event_id == "out"


def test_a_newer_opt_in_applies_to_its_channel_only() -> None:
    final, plans = run([client_event("out", t(1), email_opt_out=True, sms_opt_out=True, call_opt_out=True),
                        client_event("in", t(2), sms_opt_out=False)])
    assert dnd(plans[1]) == {"Email": "active", "SMS": "inactive", "Call": "active"}


def test_a_stale_event_that_is_the_newest_word_on_a_channel_writes_only_that() -> None:
    # The client update at 10:00 is stale against the one at 11:00, but the 11:00 one said nothing about SMS.
    final, plans = run([client_event("new", t(1, 11), email_opt_out=False),
                        client_event("old", t(1, 10), sms_opt_out=True, email_opt_out=True)])
    p = plans[1]
    assert p.outcome is Outcome.APPLIED and [type(o) for o in p.ops] == [UpsertContact]
    assert dnd(p) == {"Email": "inactive", "SMS": "active"}
    assert final.demographics_at.event_id == "new"


consent_event = st.tuples(st.sampled_from(["Email", "SMS", "Call"]), st.booleans(), st.integers(0, 5),
                          st.sampled_from(["client", "booking"]))


@PROPERTY
@given(spec=st.lists(consent_event, min_size=1, max_size=8), data=st.data())
def test_consent_is_the_latest_word_per_channel_in_any_arrival_order(spec: list, data: st.DataObject) -> None:
    field = {"Email": "email_opt_out", "SMS": "sms_opt_out", "Call": "call_opt_out"}
    events = []
    for i, (channel, out, minute, carrier) in enumerate(spec):
        client = JANE.model_copy(update={"consent": Consent(**{field[channel]: out})})
        at = t(1) + timedelta(minutes=minute)
        ev = (NormalizedEvent(event_id=f"e{i}", kind=EventKind.CLIENT_UPSERTED, occurred_at=at, location=PHX,
                              client=client) if carrier == "client"
              else booked(f"e{i}", at, appt_id=f"A{i % 2}", client=client))
        events.append(with_offset(ev, i))
    # Oracle: per channel, the event with the greatest (time, offset).
    latest: dict[str, tuple[tuple[int, int], bool]] = {}
    for i, (channel, out, minute, _) in enumerate(spec):
        if channel not in latest or (minute, i) > latest[channel][0]:
            latest[channel] = ((minute, i), out)
    expected = {ch: "active" if out else "inactive" for ch, (_, out) in latest.items()}
    for _ in range(2):
        order = data.draw(st.permutations(events), label="order")
        final, plans = run(order)
        assert final is not None
        assert {ch: "active" if r.value == "opt_out" else "inactive" for ch, r in final.consent.items()} == expected
        # The last upsert sent carries exactly that.
        upserts = [o for p in plans for o in p.ops if isinstance(o, UpsertContact)]
        assert upserts and upserts[-1].dnd == expected


def test_state_written_before_consent_and_memberships_still_loads() -> None:
    old = ClientState(client_id="48213").model_dump(mode="json")
    del old["consent"], old["memberships"]
    loaded = ClientState.from_json(json.dumps(old))
    assert loaded.consent == {} and loaded.memberships == {}
    # An op serialized before `dnd` existed too.
    op = UpsertContact(op_id="e:upsert_contact:0", event_id="e", client_id="1", location_label="L")
    raw = op.model_dump(mode="json")
    del raw["dnd"]
    assert UpsertContact.model_validate(raw).dnd == {}


# ------------------------------------------------------------------ planner: memberships


def membership_event(eid: str, kind: EventKind, at: datetime, mid: str = "M1", name: str | None = "Glow Club",
                     renewal: date | None = None, client: Client = JANE, **extra: Any) -> NormalizedEvent:
    status = {EventKind.MEMBERSHIP_CREATED: MembershipStatus.ACTIVE, EventKind.MEMBERSHIP_RENEWED:
              MembershipStatus.ACTIVE, EventKind.MEMBERSHIP_CANCELLED: MembershipStatus.CANCELLED,
              EventKind.MEMBERSHIP_EXPIRED: MembershipStatus.EXPIRED}[kind]
    return NormalizedEvent(event_id=eid, kind=kind, occurred_at=at, location=PHX, client=client,
                           membership=Membership(id=mid, name=name, status=status, renewal_date=renewal, **extra))


def membership_fields(p: Any) -> dict[str, str]:
    (op,) = [o for o in p.ops if isinstance(o, UpsertContact)]
    return {k: v for k, v in op.custom.items() if k.startswith("apro_membership")}


def test_membership_created_sets_fields_tag_and_note_without_pipeline() -> None:
    p = plan(membership_event("m1", EventKind.MEMBERSHIP_CREATED, t(15), renewal=date(2026, 12, 15),
                              start_date=date(2026, 11, 15)), None, location_label=LABEL, now=NOW)
    assert p.outcome is Outcome.APPLIED
    assert [type(o) for o in p.ops] == [UpsertContact, AddNote, AddTags]
    assert not [o for o in p.ops if isinstance(o, (UpsertOpportunity, EnrollWorkflow))]
    (up,) = [o for o in p.ops if isinstance(o, UpsertContact)]
    assert up.custom == {"apro_membership": "Glow Club", "apro_membership_status": "Active",
                         "apro_membership_renewal_date": "2026-12-15", "apro_client_id": "48213",
                         "apro_dob": "1985-03-14"}
    assert up.standard.email == "jane.doe@example.com"
    (tags,) = [o for o in p.ops if isinstance(o, AddTags)]
    assert tags.tags == (MEMBER_TAG,)
    (note,) = [o for o in p.ops if isinstance(o, AddNote)]
    assert note.body.splitlines() == ["AestheticsPro membership created", "Membership: Glow Club", "Status: Active",
                                      "Renewal date: 2026-12-15", "Start date: 2026-11-15", "Location: Scottsdale",
                                      "Membership ID: M1", "apro-event: m1"]


def test_membership_renew_cancel_and_stale_events() -> None:
    final, plans = run([
        membership_event("m1", EventKind.MEMBERSHIP_CREATED, t(1), renewal=date(2026, 12, 1)),
        membership_event("m2", EventKind.MEMBERSHIP_RENEWED, t(1, month=12), name=None, renewal=date(2027, 1, 1)),
        membership_event("m3", EventKind.MEMBERSHIP_CANCELLED, t(10, month=12), name=None,
                         end_date=date(2026, 12, 10), cancel_reason="Moving away"),
        membership_event("m0", EventKind.MEMBERSHIP_RENEWED, t(5, month=12), renewal=date(2027, 2, 1)),  # stale
    ])
    assert membership_fields(plans[1]) == {"apro_membership": "Glow Club", "apro_membership_status": "Active",
                                           "apro_membership_renewal_date": "2027-01-01"}
    assert membership_fields(plans[2]) == {"apro_membership": "Glow Club", "apro_membership_status": "Cancelled",
                                           "apro_membership_renewal_date": ""}  # "" clears the DATE field
    assert not [o for o in plans[2].ops if isinstance(o, AddTags)]  # the tag is never removed (documented)
    (note,) = [o for o in plans[2].ops if isinstance(o, AddNote)]
    assert "Reason: Moving away" in note.body and "End date: 2026-12-10" in note.body
    assert plans[3].outcome is Outcome.STALE and plans[3].ops == ()
    assert final.memberships["M1"].status is MembershipStatus.CANCELLED


def test_an_active_membership_is_shown_over_a_later_ended_one() -> None:
    final, plans = run([
        membership_event("a", EventKind.MEMBERSHIP_CREATED, t(1), mid="M1", name="Glow Club",
                         renewal=date(2026, 12, 1)),
        membership_event("b", EventKind.MEMBERSHIP_CREATED, t(2), mid="M2", name="Laser Annual"),
        membership_event("c", EventKind.MEMBERSHIP_EXPIRED, t(3), mid="M2", name=None),
    ])
    assert membership_fields(plans[2]) == {"apro_membership": "Glow Club", "apro_membership_status": "Active",
                                           "apro_membership_renewal_date": "2026-12-01"}
    assert current_membership(final.memberships).id == "M1"


def test_membership_without_contact_identity_is_state_only() -> None:
    bare = Client(id="48213")
    p = plan(membership_event("x", EventKind.MEMBERSHIP_CANCELLED, t(1), client=bare), None, location_label=LABEL,
             now=NOW)
    assert p.outcome is Outcome.NO_CONTACT and p.ops == ()
    assert p.new_state.memberships["M1"].status is MembershipStatus.CANCELLED


membership_step = st.tuples(st.sampled_from(["M1", "M2"]), st.sampled_from(sorted(
    [EventKind.MEMBERSHIP_CREATED, EventKind.MEMBERSHIP_RENEWED, EventKind.MEMBERSHIP_CANCELLED,
     EventKind.MEMBERSHIP_EXPIRED])), st.integers(0, 4), st.integers(0, 3))


@PROPERTY
@given(spec=st.lists(membership_step, min_size=1, max_size=7), data=st.data())
def test_membership_fields_do_not_depend_on_arrival_order(spec: list, data: st.DataObject) -> None:
    events = [with_offset(membership_event(f"e{i}", kind, t(1) + timedelta(hours=hour), mid=mid,
                                           name=f"{mid} plan", renewal=date(2027, 1, 1 + month * 7)), i)
              for i, (mid, kind, hour, month) in enumerate(spec)]
    # Oracle: per membership its latest event (time, offset); shown: the latest active, else the latest.
    latest: dict[str, tuple[tuple[int, int], EventKind, int]] = {}
    for i, (mid, kind, hour, month) in enumerate(spec):
        if mid not in latest or (hour, i) > latest[mid][0]:
            latest[mid] = ((hour, i), kind, month)
    active = {m: v for m, v in latest.items() if v[1] in (EventKind.MEMBERSHIP_CREATED, EventKind.MEMBERSHIP_RENEWED)}
    shown_id, (_, kind, month) = max((active or latest).items(), key=lambda kv: kv[1][0])
    is_active = kind in (EventKind.MEMBERSHIP_CREATED, EventKind.MEMBERSHIP_RENEWED)
    expected = {"apro_membership": f"{shown_id} plan",
                "apro_membership_status": {EventKind.MEMBERSHIP_CANCELLED: "Cancelled",
                                           EventKind.MEMBERSHIP_EXPIRED: "Expired"}.get(kind, "Active"),
                "apro_membership_renewal_date": date(2027, 1, 1 + month * 7).isoformat() if is_active else ""}
    for _ in range(2):
        order = data.draw(st.permutations(events), label="order")
        final, plans = run(order)
        assert final is not None
        assert {k: final.custom[k].value for k in expected} == expected
        # A stale event writes nothing; the tag comes only from an applied event that leaves its membership active.
        assert all(p.ops == () for p in plans if p.outcome is Outcome.STALE)
        for ev, p in zip(order, plans):
            if any(isinstance(o, AddTags) for o in p.ops):
                assert p.outcome is Outcome.APPLIED and ev.membership.status is MembershipStatus.ACTIVE
        # The newest event of every membership is never stale, so an active membership is always tagged.
        if active:
            assert any(isinstance(o, AddTags) for p in plans for o in p.ops)


# ------------------------------------------------------------------ executor + emulator


async def test_executor_writes_dnd_settings_and_membership_fields_to_the_emulator(ghl_emulator: Any) -> None:
    from sinks.executor import execution_order
    from streams.plan.state import mark_done
    from tests.sinks.test_executor import _executor

    executor, client, once = await _executor(ghl_emulator)
    label = ghl_emulator.location_id
    try:
        state = None
        for ev in [client_event("c1", t(1), email_opt_out=True, sms_opt_out=True),
                   membership_event("m1", EventKind.MEMBERSHIP_CREATED, t(2), renewal=date(2026, 12, 15)),
                   client_event("c2", t(3), sms_opt_out=False)]:
            p = plan(ev, state, location_label=label, now=NOW)
            state = p.new_state
            for op in execution_order(p.ops):
                state = mark_done(await executor.execute(op, state), op.op_id)
        [contact] = ghl_emulator.state()["contacts"]
        assert contact["dndSettings"] == {"Email": {"status": "active", "message": "Opted out in AestheticsPro"},
                                          "SMS": {"status": "inactive"}}
        by_key = {k.removeprefix("contact."): v for k, v in contact["customFieldsByKey"].items()}
        assert (by_key["apro_membership"], by_key["apro_membership_status"],
                by_key["apro_membership_renewal_date"]) == ("Glow Club", "Active", "2026-12-15")
        assert contact["tags"] == [MEMBER_TAG]
        # GET returns what was stored; a write naming one channel leaves the others (staff's Call setting) alone.
        await client.update_contact(contact["id"], {"dndSettings": {"Call": {"status": "permanent"}}})
        got = await client.get_contact(contact["id"])
        assert got["dndSettings"] == {"Email": {"status": "active", "message": "Opted out in AestheticsPro"},
                                      "SMS": {"status": "inactive"}, "Call": {"status": "permanent"}}
        # The emulator validates against the vendored spec: an unknown status is refused.
        from sinks.ghl.errors import GhlPermanentError
        with pytest.raises(GhlPermanentError):
            await client.update_contact(contact["id"], {"dndSettings": {"Email": {"status": "maybe"}}})
    finally:
        await client.aclose()
        await once.aclose()
