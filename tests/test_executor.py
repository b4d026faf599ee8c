"""OpExecutor against the GoHighLevel emulator: op order, in-doubt notes, opportunity search before create."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import SecretStr

from sinks.executor import OpExecutor, execution_order, ordered_pending
from sinks.ghl.client import GhlClient
from sinks.ghl.retry import RetryPolicy
from sinks.locations import GhlTarget
from sinks.provision import provision, resolve_ids
from streams.crm_ops import AddNote, OpKind, UpsertOpportunity
from streams.events import NormalizedEvent
from streams.planner import plan
from streams.state import mark_done

EVENT = {
    "event_id": "ev-1", "kind": "appointment.booked", "occurred_at": "2026-11-20T16:04:11Z",
    "location": {"id": "3", "name": "Scottsdale", "timezone": "America/Phoenix"},
    "client": {"id": "48213", "first_name": "Jane", "last_name": "Doe", "email": "jane.doe@example.com"},
    "appointment": {"id": "A-1", "start": "2026-12-01T17:30:00Z", "services": [{"name": "Botox"}]},
}


async def _executor(emu: Any) -> tuple[OpExecutor, GhlClient, GhlClient]:
    target = GhlTarget(ghl_location_id=emu.location_id, token=SecretStr(emu.token), label=emu.location_id)
    client = GhlClient(emu.base_url, target.token, emu.location_id, retry_policy=RetryPolicy(max_attempts=2))
    once = GhlClient(emu.base_url, target.token, emu.location_id, limiter=client.limiter,
                     retry_policy=RetryPolicy(max_attempts=1))
    await provision(client, target)
    return OpExecutor(client, once, await resolve_ids(client, target), emu.location_id), client, once


def _plan(label: str):  # type: ignore[no-untyped-def]
    ev = NormalizedEvent.model_validate(EVENT)
    return plan(ev, None, location_label=label, now=datetime(2026, 11, 20, tzinfo=timezone.utc),
                default_timezone="America/Phoenix")


def test_execution_order_puts_the_note_last() -> None:
    p = _plan("L")
    kinds = [op.kind for op in execution_order(p.ops)]
    assert kinds[0] is OpKind.UPSERT_CONTACT and kinds[-1] is OpKind.ADD_NOTE
    assert sorted(kinds) == sorted(op.kind for op in p.ops)
    assert [op.kind for op in ordered_pending(p.new_state)] == kinds


async def test_in_doubt_note_is_not_written_twice_and_opportunity_is_found(ghl_emulator: Any) -> None:
    executor, client, once = await _executor(ghl_emulator)
    try:
        p = _plan(ghl_emulator.location_id)
        state = p.new_state
        for op in execution_order(p.ops):
            state = mark_done(await executor.execute(op, state), op.op_id)
        assert not state.effects
        note = next(op for op in p.ops if isinstance(op, AddNote))
        # The crash case: the note reached GHL but its mark did not persist → in doubt → found, not re-sent.
        await executor.execute(note, state, in_doubt=True)
        notes = [n for n in ghl_emulator.state()["notes"] if "apro-event: ev-1" in n["body"]]
        assert len(notes) == 1
        # Opportunity with its id lost: found by search, not duplicated.
        opp = next(op for op in p.ops if isinstance(op, UpsertOpportunity))
        crm = {k: v.model_copy(update={"opportunity_id": None}) for k, v in state.crm.items()}
        lost = state.model_copy(update={"crm": crm})
        after = await executor.execute(opp, lost, in_doubt=True)
        assert after.crm[ghl_emulator.location_id].opportunity_id == state.crm[ghl_emulator.location_id].opportunity_id
        assert len(ghl_emulator.state()["opportunities"]) == 1
    finally:
        await client.aclose()
        await once.aclose()
