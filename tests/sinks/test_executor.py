"""OpExecutor against the GoHighLevel emulator: op order, in-doubt notes, opportunity search before create."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import SecretStr

from foundations.formats.crm_commands import AddNote, OpKind, UpsertOpportunity
from foundations.formats.normalized import NormalizedEvent
from sinks.executor import OpExecutor, execution_order, ordered_pending
from sinks.ghl.client import GhlClient
from sinks.ghl.retry import RetryPolicy
from sinks.locations import GhlTarget
from sinks.provision import provision, resolve_ids
from streams.plan.planner import plan
from streams.plan.state import mark_done

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


# ---------------------------------------------------------------- location breaker (sinks/budget.py)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _paused_gauge(label: str) -> float:
    from foundations.metrics import GHL_LOCATION_PAUSED

    return GHL_LOCATION_PAUSED.labels(label)._value.get()  # noqa: SLF001


def test_breaker_auth_failure_pauses_at_once_with_capped_backoff_and_success_resumes() -> None:
    import asyncio

    from sinks.budget import LocationBreaker

    async def scenario() -> None:
        clock = _Clock()
        b = LocationBreaker("auth-loc", threshold=5, base_s=1.0, max_s=4.0, clock=clock)
        assert [b.record_auth_failure() for _ in range(4)] == [1.0] * 4  # concurrent lanes: one pause
        pauses = []
        for _ in range(3):  # each failed probe doubles the pause, capped
            clock.now += b.paused_for
            probe = await asyncio.wait_for(b.wait_ready(), 1)
            pauses.append(b.record_auth_failure(probe))
        assert pauses == [2.0, 4.0, 4.0]
        assert b.tripped and b.paused_for == 4.0 and _paused_gauge("auth-loc") == 1
        clock.now += 4.0
        token = await asyncio.wait_for(b.wait_ready(), 1)
        assert token  # the pause is over: this caller probes
        b.record_success()
        assert not b.tripped and _paused_gauge("auth-loc") == 0
        assert await asyncio.wait_for(b.wait_ready(), 1) == 0  # closed: no probing any more

    asyncio.run(scenario())


def test_breaker_lets_one_probe_through_and_a_failed_probe_pauses_again() -> None:
    import asyncio

    from sinks.budget import LocationBreaker

    async def scenario() -> None:
        clock = _Clock()
        b = LocationBreaker("probe-loc", threshold=2, base_s=1.0, max_s=8.0, clock=clock)
        b.record_failure()
        assert b.paused_for == 0  # below the threshold
        b.record_failure()
        assert b.paused_for == 1.0
        clock.now += 1.0
        first = await asyncio.wait_for(b.wait_ready(), 1)
        second = asyncio.ensure_future(b.wait_ready())
        await asyncio.sleep(0.05)
        assert first and not second.done()  # one probe at a time
        b.release_probe(first + 1)  # a stale token changes nothing
        await asyncio.sleep(0.05)
        assert not second.done()
        b.release_probe(first)  # the probe ended without a verdict: the next caller probes
        token = await asyncio.wait_for(second, 1)
        assert token and token != first
        assert b.record_failure() == 0.0  # a lane that is not the probe: the pause does not grow
        assert b.record_failure(token) == 2.0  # a failed probe pauses again at once, twice as long
        b.release_probe(token)  # after a verdict: no-op
        assert b.paused_for == 2.0

    asyncio.run(scenario())
