"""What the agents need from Faust's consumer beyond a plain ack (Kafka I/O; faust-streaming 0.15.3 internals
are touched here and only here).

- `abandon`: drop a delivered record without acking it, so its offset is never committed and the partition's
  next owner (or a rewind) delivers it again.
- `SequenceGuard`: keep each partition's records in sequence (streams/offset_sequence.py explains why): a record
  that arrives after a dropped one triggers a seek back to the missing offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import faust

from apro_sync import metrics as M
from streams.offset_sequence import MAX_REWINDS, OffsetSequencer, Verdict

log = logging.getLogger("apro_sync.consumer")

REWIND_RETRY_S = 0.5  # first re-seek while a missing record has not come yet (doubling)
REWIND_RETRY_MAX_S = 5.0


def abandon(app: faust.App, event: faust.EventT) -> None:
    """Forget a delivered record: Faust stops waiting for its ack (a rebalance waits for every delivered record)
    and a later ack of it (take_events acks every event of a batch) records nothing, so it is never committed."""
    message = event.message
    message.acked = True  # Consumer.ack() returns early for an acked message: its offset is never marked done
    try:
        app.consumer._unacked_messages.discard(message)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - consumer not started: nothing waits for it
        pass


class SequenceGuard:
    """Decides, per delivered record, whether the agent may act on it now; rewinds partitions that lost one."""

    def __init__(self, app: faust.App, agent: str, sequencer: OffsetSequencer | None = None) -> None:
        self.app = app
        self.agent = agent
        self.sequencer = sequencer or OffsetSequencer()
        self._watchers: dict[Any, asyncio.Future[None]] = {}

    async def admit(self, event: faust.EventT) -> bool:
        """True: process it now. False: it was dropped (abandoned) and will come again in sequence."""
        message = event.message
        tp = message.tp
        decision = self.sequencer.check(tp, message.offset, message.generation_id or 0, self._committed(tp))
        if decision.skipped is not None:
            M.STREAM_REWINDS.labels(self.agent, "skipped").inc()
            log.error("%s: %s[%d] offset %d was not delivered after %d rewinds; skipped (replay it: "
                      "apro-sync replay)", self.agent, tp.topic, tp.partition, decision.skipped, MAX_REWINDS)
        if decision.verdict is Verdict.REWIND:
            earliest = await self._earliest(tp)
            if earliest is not None and earliest > decision.expected:
                decision = self.sequencer.accept_hole(tp, message.offset)  # retention removed them
            else:
                M.STREAM_REWINDS.labels(self.agent, "rewind").inc()
                log.warning("%s: %s[%d] offset %d arrived but %d did not; re-reading from %d",
                            self.agent, tp.topic, tp.partition, message.offset, decision.expected, decision.expected)
                abandon(self.app, event)
                await self._seek(tp, decision.expected)
                self._watch(tp, decision.expected, message.generation_id or 0)
                return False
        if decision.verdict is Verdict.HOLE:
            M.STREAM_REWINDS.labels(self.agent, "hole").inc()
            log.warning("%s: %s[%d] offsets %d..%d are not in the log; continuing at %d", self.agent, tp.topic,
                        tp.partition, decision.expected, message.offset - 1, message.offset)
            return True
        if decision.process:
            return True
        abandon(self.app, event)  # SEEN or HELD: it comes again in sequence
        return False

    def forget(self, tps: Iterable[Any] | None = None) -> None:
        self.sequencer.forget(tps)

    def _watch(self, tp: Any, expected: int, generation: int) -> None:
        """Seek again until the missing record arrives. A seek made while Faust's consumer is still handing out
        an earlier fetch can be undone by it (it raises its read position past the records the seek asked for
        and then drops them), and once the records that ran ahead are held back nothing else would arrive."""
        if tp not in self._watchers:
            self._watchers[tp] = asyncio.ensure_future(self._rewind_until_read(tp, expected, generation))

    async def _rewind_until_read(self, tp: Any, expected: int, generation: int) -> None:
        delay = REWIND_RETRY_S
        try:
            while True:
                await asyncio.sleep(delay)
                if self.sequencer.expected(tp, generation) != expected:
                    return  # it arrived, or the partition was revoked
                if not await self._seek(tp, expected):
                    return
                delay = min(delay * 2, REWIND_RETRY_MAX_S)
        finally:
            self._watchers.pop(tp, None)

    async def _seek(self, tp: Any, offset: int) -> bool:
        try:
            await self.app.consumer.seek(tp, offset)
        except Exception as exc:  # noqa: BLE001 - e.g. the partition was revoked meanwhile: its next owner reads it
            log.warning("%s: seeking %s[%d] to %d failed (%s)", self.agent, tp.topic, tp.partition, offset,
                        type(exc).__name__)
            return False
        return True

    def _committed(self, tp: Any) -> int | None:
        try:
            committed = self.app.consumer._committed_offset.get(tp)  # noqa: SLF001 - kept up to date by Faust
        except Exception:  # noqa: BLE001 - no consumer (test_context): no seed
            return None
        return committed if isinstance(committed, int) and committed > 0 else None

    async def _earliest(self, tp: Any) -> int | None:
        try:
            return (await self.app.consumer.earliest_offsets(tp)).get(tp)
        except Exception:  # noqa: BLE001 - unknown: rewind anyway (the next rewind asks again)
            return None


__all__ = ["SequenceGuard", "abandon"]
