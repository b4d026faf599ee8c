"""Reconcile benchmark: clients/s and GoHighLevel calls of `apro-sync reconcile` (check, then --fix).

Against GoHighLevel's budget bound and against single GET calls/s, same run (docs/benchmarks.md).

    python bench/reconcile.py [--clients 300]"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import sys
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydantic import SecretStr  # noqa: E402

from foundations.config import Settings  # noqa: E402
from apro_sync.local_brokers import external_or_embedded  # noqa: E402
from foundations.kafka_admin import ensure_topics  # noqa: E402
from apro_sync.ops.kafka_io import Writer  # noqa: E402
from apro_sync.ops import reconcile as reconcile_tool  # noqa: E402
from emulator.config import EmulatorConfig, LocationConfig, RateLimitConfig  # noqa: E402
from emulator.server import ThreadedEmulator  # noqa: E402
from sinks.ghl.client import GhlClient  # noqa: E402
from sinks.locations import load_locations  # noqa: E402
from sinks.provision import provision_all, resolve_ids  # noqa: E402
from sinks.agent import changelog_topic_name  # noqa: E402
from foundations.formats import crm_fields  # noqa: E402
from streams.plan.state import ClientState, CrmIds, InvoiceRecord, Register  # noqa: E402

LOCATION, TOKEN = "BenchLocation0000001", "pit-bench-location-0001"
AT = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def reg(value: str) -> Register:
    return Register(value=value, at=AT, event_id="bench", seq=1)


def populate(emu: ThreadedEmulator, settings: Settings, clients: int, rng: random.Random) -> int:  # noqa: ARG001
    """Contacts, opportunities, tags and the matching changelog; returns how many clients were drifted."""
    async def resolve() -> Any:
        async with GhlClient(settings.ghl_base_url, SecretStr(TOKEN), LOCATION) as client:
            return await resolve_ids(client, load_locations(settings).targets()[0])

    ids = asyncio.run(resolve())
    store = emu.server.store
    writer = Writer(settings.kafka_bootstrap_servers or "", one_per_batch=settings.embedded_broker)
    topic = changelog_topic_name(settings, shadow=False)
    ensure_topics(settings.kafka_bootstrap_servers or "", [topic], settings.topic_partitions)
    drifted = 0
    for i in range(clients):
        patient = i % 2 == 0
        amount = Decimal(f"{100 + i}.{i % 100:02d}")
        custom = {
            crm_fields.APRO_CLIENT_ID.key: f"B{i}",
            crm_fields.APRO_APPT_STATUS.key: "Completed" if patient else "Booked",
        }
        if patient:
            custom.update(
                {crm_fields.LAST_VISIT_DATE.key: "2026-11-20", crm_fields.INVOICE_PAID_AMOUNT.key: str(amount)}
            )
        written = dict(custom, **({crm_fields.PATIENT_LIFETIME_VALUE.key: str(amount)} if patient else {}))
        if i % 10 == 0:
            written[crm_fields.APRO_APPT_STATUS.key] = "edited by staff"
            drifted += 1
        body = {"locationId": LOCATION, "email": f"b{i}@example.com", "firstName": f"B{i}",
                "customFields": [{"id": ids.custom_fields[k], "field_value": v} for k, v in written.items()]}
        stage = crm_fields.STAGE_PATIENT if patient else crm_fields.STAGE_BOOKED
        opp_body = {"locationId": LOCATION, "pipelineId": ids.pipeline_id, "name": f"B{i}",
                    "pipelineStageId": ids.stage_ids["patient" if patient else "booked"],
                    "status": "won" if patient else "open", **({"monetaryValue": float(amount)} if patient else {})}

        def create(body: dict = body, opp_body: dict = opp_body, patient: bool = patient) -> tuple[str, str]:
            contact, _ = store.upsert_contact(LOCATION, body)
            opp = store.create_opportunity(LOCATION, {**opp_body, "contactId": contact["id"]})
            if patient:
                store.add_tags(LOCATION, contact["id"], ["apro-patient"])
            return contact["id"], opp["id"]

        contact_id, opp_id = emu._call(create)  # noqa: SLF001 - direct setup, no rate limit
        state = ClientState(
            client_id=f"B{i}", custom={k: reg(v) for k, v in custom.items()}, stage=reg(stage), patient=patient,
            contact={"email": reg(f"b{i}@example.com"), "firstName": reg(f"B{i}")},
            invoices={f"I{i}": InvoiceRecord(id=f"I{i}", paid_amount=amount, paid_event_at=AT,
                                            paid_event_id="bench")} if patient else {},
            crm={LOCATION: CrmIds(contact_id=contact_id, opportunity_id=opp_id)})
        writer.send(i, topic, json.dumps(state.client_id).encode(), json.dumps(state.to_json().decode()).encode(), [])
    writer.flush()
    return drifted


async def single_gets(settings: Settings, contact_ids: list[str], concurrency: int) -> float:
    """Baseline: plain GET /contacts/{id} calls/s at reconcile's concurrency."""
    client = GhlClient(settings.ghl_base_url, SecretStr(TOKEN), LOCATION)
    queue = list(contact_ids)
    started = time.monotonic()

    async def work() -> None:
        while queue:
            await client.get_contact(queue.pop())

    await asyncio.gather(*(work() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await client.aclose()
    return len(contact_ids) / elapsed


def scenario(name: str, bootstrap: str, embedded: bool, clients: int, burst: int) -> list[str]:
    config = EmulatorConfig(seed=3, rate_limit=RateLimitConfig(burst_max=burst),
                            locations=[LocationConfig(id=LOCATION, name="Bench Spa", token=TOKEN)])
    with ThreadedEmulator(config) as emu:
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        settings = Settings(_env_file=None, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix,
                            topic_partitions=12, embedded_broker=embedded, ghl_base_url=emu.base_url,
                            ghl_token=SecretStr(TOKEN), ghl_location_id=LOCATION)
        assert asyncio.run(provision_all(load_locations(settings).targets(), settings, dry_run=False,
                                         out=io.StringIO())) == 0
        drifted = populate(emu, settings, clients, random.Random(5))
        lines = [f"## {name}: {clients} clients, {drifted} drifted, burst {burst} / 10 s"]
        for mode, fix in (("check", False), ("fix", True), ("re-check", False)):
            (report,) = reconcile_tool.run(settings, location=None, fix=fix, log=print, show_progress=False)
            rate = report.counts.clients / report.seconds
            per_client = report.calls / max(report.counts.clients, 1)
            lines.append(f"{mode:9s} {report.counts.clients} clients in {report.seconds:.1f}s = {rate:.1f} clients/s, "
                         f"{report.calls} calls ({per_client:.2f}/client), drift {report.counts.total}, "
                         f"fixed {report.fixed_clients}")
            if mode == "check":
                if burst <= 1000:
                    bound = burst / 10 / per_client
                    lines.append(f"          budget bound {bound:.1f} clients/s -> ratio {rate / bound:.2f}")
                else:
                    ids = [c["id"] for c in emu.state()["contacts"]]
                    gets = asyncio.run(single_gets(settings, ids, reconcile_tool.CONCURRENCY))
                    lines.append(f"          baseline {gets:.1f} single GETs/s -> clients/s ratio {rate / gets:.2f}")
        return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=300)
    args = parser.parse_args()
    with external_or_embedded() as (bootstrap, embedded):
        out = scenario("unbounded", bootstrap, embedded, args.clients, 1_000_000)
        out += scenario("GoHighLevel budget", bootstrap, embedded, args.clients, 100)
    print("\n".join(out))


if __name__ == "__main__":
    main()
