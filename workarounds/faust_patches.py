"""Hooks Faust 0.15.3 offers no signal for: the start of a rebalance and the moment the consumer stops."""

from __future__ import annotations

from collections.abc import Callable

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
