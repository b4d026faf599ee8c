"""Two AestheticsPro clients sharing a phone or an email: the executor never overwrites the other client's
GoHighLevel contact (emulator: GoHighLevel's duplicate matching and its "Allow Duplicate Contact" setting). The
identity check searches by email/phone in request bodies: no request URL carries an email or a phone."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from emulator import EmulatorConfig, EmulatorServer, LocationConfig
from foundations.formats.normalized import NormalizedEvent
from sinks.errors import IdentityConflict
from sinks.executor import CONFLICT_MARKER_PREFIX, OpExecutor, execution_order
from sinks.ghl.client import GhlClient
from sinks.ghl.retry import RetryPolicy
from sinks.locations import GhlTarget
from sinks.provision import provision, resolve_ids
from streams.plan.planner import plan
from streams.plan.state import ClientState, mark_done
from tests.ghl_emulator_fixture import LOCATION_1, LOCATION_2, TOKEN_1, TOKEN_2

NOW = datetime(2026, 11, 20, tzinfo=timezone.utc)
LABEL_1, LABEL_2 = "spa-one", "spa-two"  # configured location labels (metric label values)


@pytest.fixture
def ghl_emulator_config() -> EmulatorConfig:
    # Location 1 keeps GoHighLevel's default (no duplicates); location 2 allows duplicate contacts.
    return EmulatorConfig(seed=7, locations=[
        LocationConfig(id=LOCATION_1, name="Test Spa One", token=TOKEN_1),
        LocationConfig(id=LOCATION_2, name="Test Spa Two", token=TOKEN_2, allow_duplicate_contacts=True),
    ])


def booking(event_id: str, client_id: str, *, email: str | None, phone: str | None, first: str,
            at: str = "2026-11-20T16:04:11Z", appt: str = "A-1") -> NormalizedEvent:
    return NormalizedEvent.model_validate({
        "event_id": event_id, "kind": "appointment.booked", "occurred_at": at,
        "location": {"id": "3", "name": "Scottsdale", "timezone": "America/Phoenix"},
        "client": {"id": client_id, "first_name": first, "last_name": "Rivera", "email": email, "phone": phone},
        "appointment": {"id": appt, "start": "2026-12-01T17:30:00Z", "services": [{"name": "Botox"}]},
    })


class Sink:
    """The executor of one location plus the per-client states it keeps (as the sink's table would)."""

    def __init__(self, emu: Any, location_id: str, label: str) -> None:
        self.emu, self.location_id, self.label = emu, location_id, label
        token = SecretStr(emu.tokens[location_id])
        self.target = GhlTarget(ghl_location_id=location_id, token=token, label=label)
        self.client = GhlClient(emu.base_url, token, location_id, retry_policy=RetryPolicy(max_attempts=2),
                                metrics_location=label)
        self.once = GhlClient(emu.base_url, token, location_id, limiter=self.client.limiter,
                              retry_policy=RetryPolicy(max_attempts=1), metrics_location=label)
        self.states: dict[str, ClientState] = {}
        self.executor: OpExecutor | None = None

    async def __aenter__(self) -> Sink:
        await provision(self.client, self.target)
        self.executor = OpExecutor(self.client, self.once, await resolve_ids(self.client, self.target),
                                   self.location_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.once.aclose()

    async def sync(self, ev: NormalizedEvent) -> None:
        """Plan and execute every op of the event (raises what the executor raises; the state keeps the plan)."""
        assert self.executor is not None
        p = plan(ev, self.states.get(ev.client.id), location_label=self.location_id, now=NOW)
        state = self.states[ev.client.id] = p.new_state
        for op in execution_order(p.ops):
            state = self.states[ev.client.id] = mark_done(await self.executor.execute(op, state), op.op_id)

    def contact_id(self, client_id: str) -> str | None:
        ids = self.states[client_id].crm.get(self.location_id)
        return ids.contact_id if ids else None


def contacts(emu: Any, location_id: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in emu.state()["contacts"] if c["locationId"] == location_id}


def conflicts(label: str) -> float:
    return REGISTRY.get_sample_value("apro_sync_identity_conflicts_total", {"location": label}) or 0.0


def urls_with(emu: Any, *phi: str) -> list[str]:
    """Request targets (path + query as sent, what an access log keeps) that contain any of `phi`."""
    found = []
    for r in emu.requests():
        url = unquote_plus(r["target"]).lower()
        if any(value.lower() in url or value.lstrip("+") in url for value in phi):
            found.append(f"{r['method']} {r['target']}")
    return found


def conflict_notes(emu: Any, contact_id: str) -> list[str]:
    return [n["body"] for n in emu.state()["notes"]
            if n["contactId"] == contact_id and CONFLICT_MARKER_PREFIX in n["body"]]


@pytest.mark.parametrize("shared", ["phone", "email"])
async def test_shared_identity_without_duplicates_keeps_the_first_contact_and_holds_the_second(
        ghl_emulator: Any, shared: str) -> None:
    first = dict(email="maria@example.com", phone="+14805550101")
    second = dict(email="sofia@example.com", phone="+14805550199")
    second[shared] = first[shared]
    async with Sink(ghl_emulator, LOCATION_1, LABEL_1) as sink:
        await sink.sync(booking("m-1", "74005", first="Maria", **first))
        mine = sink.contact_id("74005")
        assert mine is not None
        before = contacts(ghl_emulator, LOCATION_1)[mine]
        held = conflicts(LABEL_1)
        with pytest.raises(IdentityConflict) as caught:
            await sink.sync(booking("s-1", "740005", first="Sofia", **second))
        reason = caught.value.reason
        assert reason.startswith(f"identity conflict: {shared} matches GoHighLevel contact {mine} of "
                                 "AestheticsPro client 74005")
        for phi in ("Sofia", "Maria", "Rivera", *first.values(), *second.values()):
            assert phi not in reason
        assert conflicts(LABEL_1) == held + 1
        assert sink.contact_id("740005") is None
        after = contacts(ghl_emulator, LOCATION_1)
        assert list(after) == [mine]  # no second contact, and the first one untouched
        assert {k: v for k, v in after[mine].items() if k not in ("notes", "dateUpdated")} == \
               {k: v for k, v in before.items() if k not in ("notes", "dateUpdated")}
        (note,) = conflict_notes(ghl_emulator, mine)
        assert note.splitlines() == [
            f"AestheticsPro: another patient shares this contact's {shared}",
            f"AestheticsPro client 740005 has the same {shared} as this contact (AestheticsPro client 74005).",
            'Their events are not written to this contact: their events are held for review (dead letter, '
            'reason "identity conflict").',
            "apro-conflict: 740005",
        ]
        # The second client's next event: held again and counted, but staff are told once.
        with pytest.raises(IdentityConflict):
            await sink.sync(booking("s-2", "740005", first="Sofia", at="2026-11-21T10:00:00Z", **second))
        assert conflicts(LABEL_1) == held + 2 and len(conflict_notes(ghl_emulator, mine)) == 1
    searches = [r for r in ghl_emulator.requests() if r["path"] == "/contacts/search"]
    assert searches and all(r["status"] == 200 for r in searches)
    assert urls_with(ghl_emulator, *first.values(), *second.values()) == []


async def test_where_duplicates_are_allowed_the_second_client_gets_its_own_contact(ghl_emulator: Any) -> None:
    shared = dict(email="family@example.com", phone="+14805550101")
    async with Sink(ghl_emulator, LOCATION_2, LABEL_2) as sink:
        assert sink.executor is not None and sink.executor.ids.allow_duplicate_contacts
        await sink.sync(booking("m-1", "74005", first="Maria", **shared))
        held = conflicts(LABEL_2)
        await sink.sync(booking("s-1", "740005", first="Sofia", **shared))
        mine, theirs = sink.contact_id("74005"), sink.contact_id("740005")
        assert mine and theirs and mine != theirs
        found = contacts(ghl_emulator, LOCATION_2)
        assert (found[mine]["firstName"], found[theirs]["firstName"]) == ("Maria", "Sofia")
        assert len(conflict_notes(ghl_emulator, mine)) == 1 and conflict_notes(ghl_emulator, theirs) == []
        assert "a separate contact was created for them" in conflict_notes(ghl_emulator, mine)[0]
        assert conflicts(LABEL_2) == held  # not a held conflict
        # Later events of either client go to their own contact by id.
        await sink.sync(booking("m-2", "74005", first="Maria", at="2026-11-22T10:00:00Z", appt="A-2", **shared))
        await sink.sync(booking("s-2", "740005", first="Sofia", at="2026-11-22T11:00:00Z", appt="A-3", **shared))
        found = contacts(ghl_emulator, LOCATION_2)
        assert len(found) == 2
        assert (found[mine]["firstName"], found[theirs]["firstName"]) == ("Maria", "Sofia")
    assert urls_with(ghl_emulator, *shared.values()) == []


async def test_both_clients_changing_their_phone_and_email_later(ghl_emulator: Any) -> None:
    async with Sink(ghl_emulator, LOCATION_1, LABEL_1) as sink:
        await sink.sync(booking("m-1", "74005", first="Maria", email="maria@example.com", phone="+14805550101"))
        mine = sink.contact_id("74005")
        with pytest.raises(IdentityConflict):
            await sink.sync(booking("s-1", "740005", first="Sofia", email="sofia@example.com", phone="+14805550101"))
        # The second client gets a phone of their own: a contact of their own, the first one untouched.
        await sink.sync(booking("s-2", "740005", first="Sofia", email="sofia@example.com", phone="+14805550199",
                                at="2026-11-21T10:00:00Z"))
        theirs = sink.contact_id("740005")
        assert theirs and theirs != mine
        # The first client changes their email to the second's: written to their own contact by id, never merged.
        await sink.sync(booking("m-2", "74005", first="Maria", email="sofia@example.com", phone="+14805550101",
                                at="2026-11-22T10:00:00Z", appt="A-2"))
        found = contacts(ghl_emulator, LOCATION_1)
        assert set(found) == {mine, theirs}
        assert (found[mine]["firstName"], found[mine]["email"], found[mine]["phone"]) == (
            "Maria", "sofia@example.com", "+14805550101")
        assert (found[theirs]["firstName"], found[theirs]["email"], found[theirs]["phone"]) == (
            "Sofia", "sofia@example.com", "+14805550199")
        by_key = {c["id"]: c["customFieldsByKey"] for c in ghl_emulator.state()["contacts"]}
        assert by_key[mine]["contact.apro_client_id"] == "74005"
        assert by_key[theirs]["contact.apro_client_id"] == "740005"
    assert urls_with(ghl_emulator, "maria@example.com", "sofia@example.com", "+14805550101", "+14805550199") == []


def test_emulator_models_duplicate_search_sequence_and_the_location_setting(ghl_emulator: Any) -> None:
    with httpx.Client(base_url=ghl_emulator.base_url) as http:
        def upsert(location: str, **body: Any) -> dict[str, Any]:
            r = http.post("/contacts/upsert", headers=ghl_emulator.headers(location),
                          json={"locationId": location, **body})
            assert r.status_code == 200, r.text
            return r.json()

        def duplicate(location: str, **query: str) -> dict[str, Any]:
            r = http.get("/contacts/search/duplicate", headers=ghl_emulator.headers(location),
                         params={"locationId": location, **query})
            assert r.status_code == 200, r.text
            return r.json()

        a = upsert(LOCATION_1, email="a@example.com", phone="+14805550101")["contact"]["id"]
        b = upsert(LOCATION_1, email="b@example.com", phone="+14805550102")["contact"]["id"]
        # Email first, then phone (the default search sequence); the answer says which field matched.
        split = duplicate(LOCATION_1, email="a@example.com", number="+14805550102")
        assert (split["contact"]["id"], split["matchingField"]) == (a, "email")
        by_phone = duplicate(LOCATION_1, email="new@example.com", number="+14805550102")
        assert (by_phone["contact"]["id"], by_phone["matchingField"]) == (b, "phone")
        assert duplicate(LOCATION_1, email="none@example.com")["contact"] is None
        # (That endpoint takes email and phone in the URL, which the sink therefore no longer calls.)
        assert urls_with(ghl_emulator, "none@example.com") == [
            "GET /contacts/search/duplicate?locationId=TestLocation00000001&email=none%40example.com"]
        # createNewIfDuplicateAllowed is ignored where duplicates are not allowed ...
        again = upsert(LOCATION_1, email="a@example.com", firstName="X", createNewIfDuplicateAllowed=True)
        assert (again["new"], again["contact"]["id"]) == (False, a)
        # ... and creates a separate contact where they are.
        c = upsert(LOCATION_2, email="a@example.com")["contact"]["id"]
        d = upsert(LOCATION_2, email="a@example.com", createNewIfDuplicateAllowed=True)
        assert d["new"] and d["contact"]["id"] != c
        settings = {loc: http.get(f"/locations/{loc}", headers=ghl_emulator.headers(loc)).json()["location"]
                    ["settings"]["allowDuplicateContact"] for loc in (LOCATION_1, LOCATION_2)}
        assert settings == {LOCATION_1: False, LOCATION_2: True}
        assert http.get(f"/locations/{LOCATION_2}", headers=ghl_emulator.headers(LOCATION_1)).status_code == 403


def test_emulator_search_sequence_can_put_phone_first() -> None:
    from emulator.state import Store

    store = Store(EmulatorConfig(contact_match_order=("phone", "email")))
    loc = store.config.locations[0].id
    a, _ = store.upsert_contact(loc, {"locationId": loc, "email": "a@example.com", "phone": "+14805550101"})
    b, _ = store.upsert_contact(loc, {"locationId": loc, "email": "b@example.com", "phone": "+14805550102"})
    found, field = store.duplicate(loc, loc, "a@example.com", "+14805550102")
    assert (found["id"], field) == (b["id"], "phone")  # type: ignore[index]
    updated, new = store.upsert_contact(loc, {"locationId": loc, "email": "a@example.com", "phone": "+14805550102",
                                              "firstName": "Z"})
    assert (updated["id"], new) == (b["id"], False)
    assert store.search_contacts(loc, {"locationId": loc, "pageLimit": 1, "filters": [
        {"field": "phone", "operator": "eq", "value": "(480) 555-0102"}]})["contacts"][0]["id"] == b["id"]


@pytest.mark.parametrize("order", [("email", "phone"), ("phone", "email")])
async def test_find_duplicate_finds_the_contact_upsert_resolves_to(order: tuple[str, str]) -> None:
    """Contacts A and B; an email/phone pair matching A, B, both (split) or neither: the search names the contact
    the upsert then updates, in either search sequence (the emulator's `contact_match_order` and the client's)."""
    config = EmulatorConfig(contact_match_order=order)
    loc = config.locations[0]
    cases = [("a@example.com", "+14805550102"), ("A@Example.com", None), (None, "(480) 555-0102"),
             ("new@example.com", "+14805550102"), ("b@example.com", "+14805550199"),
             ("new@example.com", "+14805550199"), ("new@example.com", None)]
    async with EmulatorServer(config) as emu, GhlClient(emu.base_url, SecretStr(loc.token), loc.id,
                                                         contact_match_order=order) as client:
        for email, phone in cases:
            emu.reset()  # same seed, same requests: A and B get the same ids every time
            a = (await client.upsert_contact({"email": "a@example.com", "phone": "+14805550101"})).contact_id
            b = (await client.upsert_contact({"email": "b@example.com", "phone": "+14805550102"})).contact_id
            found = await client.find_duplicate(email, phone)
            resolved = await client.upsert_contact({k: v for k, v in (("email", email), ("phone", phone)) if v})
            if resolved.new:
                assert found is None, (email, phone)
            else:
                assert found is not None and found["id"] == resolved.contact_id, (email, phone)
            if (email, phone) == ("a@example.com", "+14805550102"):  # the split match follows the sequence
                assert found is not None and found["id"] == (a if order[0] == "email" else b)
        assert all(r["path"] != "/contacts/search/duplicate" for r in emu.requests())
