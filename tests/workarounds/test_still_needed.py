"""Each workaround's cause, checked in the installed library: a failure here means a workaround may be obsolete.

workarounds/README.md says what to do when one of these fails (re-measure, then drop the workaround).
"""

import inspect

import faust
from faust.transport import consumer as faust_consumer
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
