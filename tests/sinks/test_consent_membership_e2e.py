"""Issue 12 end to end (raw webhooks → broker → `apro-sync worker` → GoHighLevel emulator), exact CRM state:
an opt-out then a stale opt-in, and a membership created then cancelled."""

from __future__ import annotations

import pytest

from tests.sinks.test_e2e import (  # noqa: F401 - `stack` is the fixture
    Stack,
    contact_by_email,
    enrollments_of,
    fields,
    notes_of,
    opportunities_of,
    stack,
    with_id,
)
from tests.sinks.test_sync_rules_e2e import markers

pytestmark = [pytest.mark.integration, pytest.mark.broker_neutral]
OPTED_OUT = {"status": "active", "message": "Opted out in AestheticsPro"}


def test_opt_out_then_stale_opt_in_and_membership_created_then_cancelled(
        stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    opt_out = fixture_bodies["client_marketing_opt_out"]  # 2026-11-26: email + SMS out, calls allowed
    stack.send([
        with_id(opt_out, "consent-out"),
        # Delivered later but written earlier: it must not undo the opt-outs.
        with_id(opt_out, "consent-stale-in", occurredAt="2026-11-25T09:00:00Z", client__emailOptOut=False,
                client__OptOutSMS="N"),
        with_id(fixture_bodies["membership_created"], "member-created"),
        # Ids only (no email or phone): reaches the contact recorded for the client. Its own key is `event_id`.
        with_id(fixture_bodies["membership_cancelled"].replace(b'"event_id"', b'"delivery"'), "member-cancelled"),
    ])
    stack.wait_for(lambda s: any("apro-event: member-cancelled" in n["body"] for n in s["notes"]))
    state = stack.settle()
    assert len(state["contacts"]) == 1
    jane = contact_by_email(state, "jane.doe@example.com")
    assert jane is not None
    assert (jane["firstName"], jane["lastName"], jane["phone"]) == ("Jane", "Doe", "+14805550134")
    assert jane["dndSettings"] == {"Email": OPTED_OUT, "SMS": OPTED_OUT, "Call": {"status": "inactive"}}
    assert fields(jane) == {
        "apro_client_id": "48213",
        "apro_membership": "Glow Club Monthly",
        "apro_membership_status": "Cancelled",
        "apro_membership_renewal_date": "",
    }
    assert jane["tags"] == ["apro-member"]  # added by the creation, kept after the cancellation (documented)
    assert markers(state, jane) == ["member-cancelled", "member-created"]  # client updates write no note
    (created,) = [n for n in notes_of(state, jane) if "apro-event: member-created" in n]
    assert created.splitlines() == ["AestheticsPro membership created", "Membership: Glow Club Monthly",
                                    "Status: Active", "Renewal date: 2026-12-15", "Start date: 2026-11-15",
                                    "Location: Scottsdale", "Membership ID: MEM-3301", "apro-event: member-created"]
    (cancelled,) = [n for n in notes_of(state, jane) if "apro-event: member-cancelled" in n]
    assert cancelled.splitlines() == ["AestheticsPro membership cancelled", "Membership: Glow Club Monthly",
                                      "Status: Cancelled", "End date: 2026-12-20", "Reason: Moving away",
                                      "Location: Scottsdale", "Membership ID: MEM-3301",
                                      "apro-event: member-cancelled"]
    assert opportunities_of(state, jane) == [] and enrollments_of(state, jane) == {}  # no pipeline move


