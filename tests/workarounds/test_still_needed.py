"""Each workaround's cause, checked in the installed library: a failure here means a workaround may be obsolete.

workarounds/README.md says what to do when one of these fails (re-measure, then drop the workaround).
"""

import asyncio
import inspect

import faust
from faust.transport import consumer as faust_consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from faust.transport.drivers import aiokafka as faust_aiokafka

from workarounds import faust_patches


def test_faust_gap_check_is_still_off_by_one_and_skipped_at_offset_zero():
    """partition_acker.PartitionAcker and offset_sequence: Faust's commit check still reads `> 1` and `if committed`."""
    source = inspect.getsource(faust_consumer.Consumer._new_offset)
    assert "if committed_offset:" in source
    assert "min(acked) - committed_offset > 1" in source


def test_faust_still_hard_codes_the_stream_consumers_fetch_wait():
    """faust_app._short_fetch_wait_for_embedded_broker replaces this hard-coded wait for the embedded broker."""
    assert "fetch_max_wait_ms=1500" in inspect.getsource(faust_aiokafka)


def test_the_hooks_faust_patches_wraps_still_exist_and_are_wrapped():
    app = faust.App("apro-workarounds-check", broker="kafka://127.0.0.1:1", store="memory://")
    calls: list[str] = []
    faust_patches.on_rebalance_start(app, lambda: calls.append("rebalance"))
    faust_patches.before_consumer_stops(app, lambda: calls.append("stop"))
    app.on_rebalance_start()
    assert calls == ["rebalance"]
    assert inspect.iscoroutinefunction(app._stop_consumer)


def test_faust_still_commits_past_the_gaps_it_records() -> None:
    """faust_patches.commit_no_gaps: Faust's own `_add_gap` makes a commit pass offsets nobody acked."""
    faust_patches.commit_no_gaps()
    app = faust.App("apro-gap-fill-check", broker="kafka://127.0.0.1:1", store="memory://")
    app.topics._acking_topics.add("t")  # noqa: SLF001
    consumer, tp = app.consumer, TP("t", 0)
    faust_add_gap = faust_consumer.Consumer._apro_faust_add_gap  # type: ignore[attr-defined]  # noqa: SLF001

    async def run() -> int | None:
        consumer._committed_offset[tp] = 30  # noqa: SLF001
        await faust_add_gap(consumer, tp, 30, 37)
        for offset in (30, 31, 32):
            message = ConsumerMessage("t", 0, offset, 0.0, 0, [], b"k", b"v", None, 1, 1, tp)
            consumer.ack(message)
            consumer._committed_offset[tp] = consumer._new_offset(tp) or 30  # noqa: SLF001
        return consumer._new_offset(tp)  # noqa: SLF001

    assert asyncio.run(run()) == 38  # 33..37 were never acked
