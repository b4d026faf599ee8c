"""Hooks Faust 0.15.3 offers no signal for (the start of a rebalance, the moment the consumer stops), and its
commit past offsets it never delivered, switched off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust


def on_rebalance_start(app: faust.App, callback: Callable[[], None]) -> None:
    """Run `callback` right after Faust's own `on_rebalance_start`, before it waits for in-flight events."""
    original = app.on_rebalance_start

    def patched() -> None:
        original()
        callback()

    app.on_rebalance_start = patched  # type: ignore[method-assign]


def before_consumer_stops(app: faust.App, callback: Callable[[], None]) -> None:
    """Run `callback` before Faust's private `_stop_consumer`, so intake closes before the consumer goes."""
    original = app._stop_consumer  # noqa: SLF001

    async def patched() -> None:
        callback()
        await original()

    app._stop_consumer = patched  # type: ignore[method-assign]  # noqa: SLF001


def commit_no_gaps() -> None:
    """faust-streaming 0.15.3 records a jump in the offsets it fetched as a gap (`Consumer._add_gap`) and, at the
    first ack past the gap's start, counts the whole gap as acked and commits past it: before `SequenceGuard` has
    read those records from the broker and the agent has finished them, so a stop or a crash in between loses
    them. A jump is the guard's to handle (it acks records gone from the log itself), so Faust records none."""
    from faust.transport import consumer

    if getattr(consumer.Consumer, "_apro_commit_no_gaps", False):
        return

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:  # noqa: ARG001
        return None

    consumer.Consumer._apro_faust_add_gap = consumer.Consumer._add_gap  # type: ignore[attr-defined]  # noqa: SLF001
    consumer.Consumer._add_gap = _add_gap  # type: ignore[method-assign]  # noqa: SLF001
    consumer.Consumer._apro_commit_no_gaps = True  # type: ignore[attr-defined]  # noqa: SLF001
