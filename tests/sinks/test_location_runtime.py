"""One GoHighLevel location as the lanes share it (sinks/location_runtime.py), against the emulator on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from foundations.config import Settings
from sinks.ghl.errors import GhlTransientError
from sinks.location_runtime import LocationRuntime
from sinks.locations import GhlTarget
from sinks.provision import ResolvedIdsCache, provision

ID_READS = ("/locations/{locationId}/customFields", "/opportunities/pipelines", "/workflows/")


def _settings(emu: Any, **overrides: Any) -> Settings:
    return Settings(_env_file=None, ghl_base_url=emu.base_url, ghl_max_retries=3, sink_pause_after=4,
                    sink_pause_s=2.0, sink_pause_max_s=8.0, **overrides)


def _target(emu: Any, location_id: str) -> GhlTarget:
    return GhlTarget(ghl_location_id=location_id, token=SecretStr(emu.tokens[location_id]), label=location_id)


def _id_reads(emu: Any, location_id: str) -> int:
    return sum(1 for r in emu.requests() if r["locationId"] == location_id and r["path"] in ID_READS)


async def test_ids_are_resolved_once_per_location_however_many_lanes_ask(ghl_emulator: Any) -> None:
    cache = ResolvedIdsCache()
    runtimes = [LocationRuntime(_target(ghl_emulator, loc), _settings(ghl_emulator), cache)
                for loc in ghl_emulator.location_ids]
    try:
        for rt in runtimes:
            await provision(rt.client, rt.target)
        before = {loc: _id_reads(ghl_emulator, loc) for loc in ghl_emulator.location_ids}
        executors = await asyncio.gather(*(rt.executor() for rt in runtimes for _ in range(8)))
        assert len({id(e) for e in executors}) == 2  # one executor per location, shared by every lane
        for rt in runtimes:
            assert await rt.executor() is await rt.executor()
            assert (await rt.executor()).label == rt.label
        reads = {loc: _id_reads(ghl_emulator, loc) - before[loc] for loc in ghl_emulator.location_ids}
        assert all(0 < n <= len(ID_READS) for n in reads.values()), reads
    finally:
        for rt in runtimes:
            await rt.aclose()


async def test_the_retrying_client_and_the_single_shot_one_share_the_location(ghl_emulator: Any) -> None:
    loc = ghl_emulator.location_id
    rt = LocationRuntime(_target(ghl_emulator, loc), _settings(ghl_emulator), ResolvedIdsCache())
    try:
        assert rt.once.limiter is rt.client.limiter  # one rate budget per location
        ghl_emulator.set_faults([{"kind": "status", "status": 503, "probability": 1.0}])
        with pytest.raises(GhlTransientError):
            await rt.once.list_custom_fields()
        assert len(ghl_emulator.requests()) == 1  # notes and enrollments retry in the executor, checking first
        with pytest.raises(GhlTransientError):
            await rt.client.list_custom_fields()
        assert len(ghl_emulator.requests()) == 1 + 3  # ghl_max_retries attempts in all
    finally:
        await rt.aclose()


async def test_the_breaker_follows_the_settings(ghl_emulator: Any) -> None:
    rt = LocationRuntime(_target(ghl_emulator, ghl_emulator.location_id), _settings(ghl_emulator),
                         ResolvedIdsCache())
    try:
        for _ in range(3):
            rt.breaker.record_failure()
        assert not rt.breaker.tripped
        assert rt.breaker.record_failure() == pytest.approx(2.0, abs=0.1)  # the 4th pauses for sink_pause_s
        assert rt.breaker.pause_for_trip(10) == 8.0  # capped at sink_pause_max_s
    finally:
        await rt.aclose()


async def test_in_shadow_mode_writes_are_recorded_and_reads_still_go_to_ghl(ghl_emulator: Any) -> None:
    recorded: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        recorded.append((key, value, headers))

    rt = LocationRuntime(_target(ghl_emulator, ghl_emulator.location_id), _settings(ghl_emulator),
                         ResolvedIdsCache(), shadow_send=send)
    try:
        await rt.client.list_custom_fields()
        await rt.client.upsert_contact({"email": "jane.doe@example.com", "firstName": "Jane"})
        assert [r["method"] for r in ghl_emulator.requests()] == ["GET"]
        assert not ghl_emulator.state()["contacts"]
        assert len(recorded) == 1 and dict(recorded[0][2])["apro-shadow-path"] == b"/contacts/upsert"
    finally:
        await rt.aclose()
