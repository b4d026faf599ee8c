"""Backfill acceptance at the issue's CI size without a broker: a generated export of 10,000 clients is read, built
into historical events and run through the real normalizer and planner, client by client; what the planned contact
writes leave in the CRM (lifetime value to the cent, last and next visit) must equal the export. The pipeline
around them (broker, sink, GoHighLevel) is tests/ops/test_backfill_e2e.py's, at 300 clients (docs/benchmarks.md,
"Backfill"). `APRO_BACKFILL_PLAN_CLIENTS=N` sets another size; `APRO_LONG=1`: 100,000."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from apro_sync.ops import backfill as backfill_mod
from foundations.config import Settings
from foundations.formats import crm_fields
from foundations.formats import headers as header_names
from foundations.formats.crm_commands import UpsertContact, UpsertOpportunity
from foundations.formats.normalized import NormalizedEvent
from streams.normalize.rules import normalize
from streams.plan.planner import plan
from tests.ops.backfill_generator import generate

CLIENTS = int(os.environ.get("APRO_BACKFILL_PLAN_CLIENTS")
              or (100_000 if os.environ.get("APRO_LONG") == "1" else 10_000))
pytestmark = pytest.mark.timeout(300 + CLIENTS // 10)
HEADERS = {header_names.BACKFILL: "1", header_names.CONTENT_TYPE: "application/json"}


def written(events: list[backfill_mod.HistoricalEvent], settings: Settings) -> tuple[dict[str, Any], list[Any]]:
    """Plan a client's events in order from an empty state; the last value each contact write sent per custom
    field (ops are absolute: the CRM shows the last one), and every opportunity write."""
    state, fields, opportunities = None, {}, []
    for offset, event in enumerate(events):
        result = normalize(event.body, HEADERS, default_timezone=settings.default_timezone,
                           default_region=settings.default_phone_region)
        assert isinstance(result, NormalizedEvent), result
        planned = plan(result.model_copy(update={"raw_offset": offset}), state, location_label="L", now=event.at,
                       default_timezone=settings.default_timezone)
        state = planned.new_state
        for op in planned.ops:
            if isinstance(op, UpsertContact):
                fields.update(op.custom)
            elif isinstance(op, UpsertOpportunity):
                opportunities.append(op)
    return fields, opportunities


def check_shard(paths: tuple[Path, Path, Path], as_of: datetime, truth: dict[str, dict[str, Any]], shard: int,
                shards: int) -> tuple[int, dict[str, int]]:
    """In a worker process: read the export (as the CLI does), plan every `shards`-th client from `shard`; the
    number of clients checked and the count of wrong values per field."""
    settings = Settings(_env_file=None)
    prepared = backfill_mod.prepare(backfill_mod.BackfillRequest(*paths, as_of=as_of), settings)
    assert not prepared.export.rejects
    assert sorted(prepared.by_client) == sorted(truth)
    wrong: dict[str, int] = {}
    mine = sorted(prepared.by_client)[shard::shards]
    for client_id in mine:
        events, expected = prepared.by_client[client_id], truth[client_id]
        fields, opportunities = written(events, settings)
        checks = {
            "lifetime value": Decimal(str(fields.get(crm_fields.PATIENT_LIFETIME_VALUE.key, "0"))) == expected["ltv"],
            "last visit": fields.get(crm_fields.LAST_VISIT_DATE.key, "") == expected["last_visit"],
            "next visit": fields.get(crm_fields.NEXT_VISIT_DATE.key, "") == expected["next_visit"],
            "opportunity value": not expected["patient"] or (
                opportunities[-1].status == "won" and opportunities[-1].monetary_value == expected["ltv"]),
        }
        for name, ok in checks.items():
            if not ok:
                wrong[name] = wrong.get(name, 0) + 1
    return len(mine), wrong


def test_every_clients_lifetime_value_and_visits_equal_the_export(tmp_path: Path) -> None:
    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    paths, truth = generate(tmp_path / "export", CLIENTS, seed=23, as_of=as_of, location="3")
    shards = max(1, min(4, os.cpu_count() or 1))  # CPU-bound: one process per core
    with ProcessPoolExecutor(max_workers=shards) as pool:
        results = list(pool.map(check_shard, *zip(*[(paths, as_of, truth, n, shards) for n in range(shards)])))
    wrong: dict[str, int] = {}
    for _, counts in results:
        for name, n in counts.items():
            wrong[name] = wrong.get(name, 0) + n
    assert sum(checked for checked, _ in results) == CLIENTS
    assert wrong == {}, f"clients whose CRM values differ from the export, per field, of {CLIENTS}: {wrong}"
