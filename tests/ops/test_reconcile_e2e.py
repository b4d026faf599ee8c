"""`apro-sync reconcile` end to end: a real worker builds the state from webhooks on the broker, staff-like edits
through the GoHighLevel API drift 1,000 owned fields (custom fields, opportunity, tags, DND per channel), reconcile
counts each per field, --fix repairs all of them and a second run finds none."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import pytest

from emulator.config import EmulatorConfig, LocationConfig, RateLimitConfig
from foundations.formats import crm_fields
from tests.conftest import REPO
from tests.ghl_emulator_fixture import LOCATION_1, LOCATION_2, TOKEN_1, TOKEN_2
from tests.streams.normalize.test_worker import worker_env
from tests.sinks.test_e2e import Stack, fields, stack, stage_name  # noqa: F401 - `stack` is the fixture

pytestmark = pytest.mark.integration

CLIENTS = 120
DRIFTS = 1000


@pytest.fixture
def ghl_emulator_config() -> EmulatorConfig:
    # A larger burst than GoHighLevel's 100 / 10 s keeps the test short; the client paces by the same headers.
    return EmulatorConfig(seed=7, rate_limit=RateLimitConfig(burst_max=2000),
                          locations=[LocationConfig(id=LOCATION_1, name="Test Spa One", token=TOKEN_1),
                                     LocationConfig(id=LOCATION_2, name="Test Spa Two", token=TOKEN_2)])


def bodies(fixture_bodies: dict[str, bytes]) -> list[bytes]:
    """Per client: a booking; every second client then pays for it (a patient: value, tag, won); every third
    states its marketing consent (DND per channel); every fourth (from the second) starts a membership (member
    tag and fields)."""
    out = []
    for i in range(CLIENTS):
        appt = json.loads(fixture_bodies["appointment_created"])
        client = {**appt["client"], "clientId": f"R{i}", "email": f"r{i}@example.com", "firstName": f"F{i}"}
        client.pop("mobilePhone")
        appt.update(eventId=f"appt-{i}", client=client)
        appt["appointment"]["appointmentId"] = f"A-{i}"
        out.append(json.dumps(appt).encode())
        if i % 2 == 0:
            inv = json.loads(fixture_bodies["invoice_paid"])
            inv.update(eventId=f"inv-{i}", client=client)
            inv["invoice"].update(invoiceId=f"INV-{i}", amountPaid=f"{100 + i}.{i % 100:02d}")
            inv["invoice"]["appointment"]["appointmentId"] = f"A-{i}"
            out.append(json.dumps(inv).encode())
        if i % 3 == 0:
            consent = json.loads(fixture_bodies["client_marketing_opt_out"])
            opt_outs = {k: v for k, v in consent["client"].items() if k in ("emailOptOut", "OptOutSMS", "marketing")}
            if i % 2:  # opted back in by email: both DND statuses appear
                opt_outs["emailOptOut"] = False
            consent.update(eventId=f"consent-{i}", client={**client, **opt_outs})
            out.append(json.dumps(consent).encode())
        if i % 4 == 1:
            member = json.loads(fixture_bodies["membership_created"])
            member.update(eventId=f"mem-{i}", client=client)
            member["membership"]["membershipId"] = f"MEM-{i}"
            out.append(json.dumps(member).encode())
    return out


def dnd(contact: dict[str, Any]) -> dict[str, str]:
    return {ch: s.get("status") for ch, s in (contact.get("dndSettings") or {}).items()}


def reconcile(stack: Stack, *args: str) -> tuple[dict[str, int], str]:
    env = {**worker_env(stack.settings), "APRO_GHL_BASE_URL": stack.emulator.base_url,
           "APRO_GHL_TOKEN": stack.emulator.token, "APRO_GHL_LOCATION_ID": stack.emulator.location_id}
    proc = subprocess.run([sys.executable, "-m", "apro_sync.cli", "reconcile", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        if line.startswith("  ") and ": " in line and not line.strip().startswith(("fixed", "failed")):
            name, _, number = line.strip().rpartition(": ")
            counts[name] = int(number)
    return counts, proc.stdout


def owned_view(state: dict[str, Any]) -> dict[str, Any]:
    """What apro-sync owns per contact (empty values as absent), to compare before and after."""
    view = {}
    for c in state["contacts"]:
        opps = [(stage_name(state, o), o["status"], o.get("monetaryValue")) for o in state["opportunities"]
                if o.get("contactId") == c["id"]]
        view[c["id"]] = ({k: v for k, v in fields(c).items() if v not in ("", None)},
                         sorted(t for t in c.get("tags", []) if t.startswith("apro-")), opps, dnd(c))
    return view


def inject(stack: Stack, state: dict[str, Any], rng: random.Random) -> tuple[Counter[str], int]:
    """DRIFTS distinct (contact, owned field) edits through the public API, as staff editing in GoHighLevel."""
    keys = {f["id"]: f["fieldKey"].removeprefix("contact.") for f in state["customFields"]
            if f.get("locationId") == stack.emulator.location_id}
    ids = {key: fid for fid, key in keys.items()}
    stages = {s["name"]: s["id"] for p in state["pipelines"] if p.get("locationId") == stack.emulator.location_id
              for s in p["stages"]}
    slots: list[tuple[dict[str, Any], str]] = []
    for c in state["contacts"]:
        patient = "apro-patient" in c.get("tags", [])
        owned = [k for k, v in fields(c).items() if v not in ("", None)] + [crm_fields.NEXT_VISIT_DATE.key]
        owned += ["opportunity.stage", "opportunity.status"]
        owned += ["opportunity.monetary_value", "tag.apro-patient"] if patient else []
        owned += ["tag.apro-member"] if "apro-member" in c.get("tags", []) else []
        owned += [f"dnd.{channel}" for channel in dnd(c)]
        slots += [(c, name) for name in sorted(set(owned))]
    chosen = rng.sample(slots, DRIFTS)
    by_contact: dict[str, list[str]] = {}
    for c, name in chosen:
        by_contact.setdefault(c["id"], []).append(name)
    injected: Counter[str] = Counter(name for _, name in chosen)
    contacts = {c["id"]: c for c in state["contacts"]}
    with httpx.Client(base_url=stack.emulator.base_url, headers=stack.emulator.headers()) as http:
        for contact_id, names in by_contact.items():
            contact = contacts[contact_id]
            custom = []
            for name in (n for n in names if n in ids):
                kind = crm_fields.BY_KEY[name].data_type
                value = {"DATE": "2020-01-01", "MONETORY": "1.23"}.get(kind.value, f"edited {rng.randrange(10**6)}")
                custom.append({"id": ids[name], "field_value": value})
            seen = dnd(contact)
            flips = {channel: {"status": "inactive" if seen[channel] == "active" else "active"}
                     for channel in (n.removeprefix("dnd.") for n in names if n.startswith("dnd."))}
            change_contact: dict[str, Any] = {"customFields": custom} if custom else {}
            if flips:
                change_contact["dndSettings"] = flips
            if change_contact:
                http.put(f"/contacts/{contact_id}", json=change_contact).raise_for_status()
            opp = next(o for o in state["opportunities"] if o["contactId"] == contact_id)
            change: dict[str, Any] = {}
            if "opportunity.stage" in names:
                change["pipelineStageId"] = stages["New Lead"]
            if "opportunity.status" in names:
                change["status"] = "lost"
            if "opportunity.monetary_value" in names:
                change["monetaryValue"] = 1
            if change:
                http.put(f"/opportunities/{opp['id']}", json=change).raise_for_status()
            tags = [name.removeprefix("tag.") for name in names if name.startswith("tag.")]
            if tags:
                http.request("DELETE", f"/contacts/{contact_id}/tags", json={"tags": tags}).raise_for_status()
    return injected, len(by_contact)


def test_reconcile_finds_every_injected_drift_and_fix_repairs_all(
        stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    stack.send(bodies(fixture_bodies))
    patients, consents, members = CLIENTS // 2, len(range(0, CLIENTS, 3)), len(range(1, CLIENTS, 4))
    stack.wait_for(lambda s: len(s["contacts"]) == CLIENTS and sum(
        "apro-patient" in c.get("tags", []) for c in s["contacts"]) == patients
        and sum(1 for n in s["notes"] if "apro-event: inv-" in n["body"]) == patients
        and sum(1 for n in s["notes"] if "apro-event: mem-" in n["body"]) == members
        and sum(len(dnd(c)) == 3 for c in s["contacts"]) == consents, timeout_s=240)
    before = stack.settle()
    assert sum("apro-member" in c.get("tags", []) for c in before["contacts"]) == members
    stack.stop()  # the state is complete; reconcile reads it from the changelog

    clean, out = reconcile(stack, "--no-progress")
    assert clean == {}, out
    assert f"{CLIENTS} client(s) compared, 0 skipped" in out

    injected, drifted_contacts = inject(stack, before, random.Random(12))
    assert sum(injected.values()) == DRIFTS
    assert {"dnd.Email", "dnd.SMS", "dnd.Call", "tag.apro-member"} <= set(injected)
    found, out = reconcile(stack)
    assert found == dict(injected), out
    assert f"{DRIFTS} field(s) drifted" in out

    fixed, out = reconcile(stack, "--fix")
    assert fixed == dict(injected), out
    assert f"fixed: {drifted_contacts} client(s)" in out
    again, out = reconcile(stack)
    assert again == {}, out
    after = stack.emulator.state()
    assert owned_view(after) == owned_view(before)
    assert len(after["notes"]) == len(before["notes"])  # reconcile writes no note and enrolls nobody
    assert after["enrollmentCounts"] == before["enrollmentCounts"]
