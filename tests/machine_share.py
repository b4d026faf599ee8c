"""CI runs the embedded and the Apache Kafka pass side by side (.ci/run, docs/ci.md). Tests marked `solo` (the crash
tests, whose progress deadlines assume the cores to themselves) then run alone: a file lock that every other test
shares and a solo test holds exclusively. Without APRO_TEST_SHARE_LOCK (a plain `pytest` run) nothing is locked."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ENV = "APRO_TEST_SHARE_LOCK"


@contextmanager
def machine_share(path: Path, *, solo: bool) -> Iterator[None]:
    """Hold the machine shared (any number of holders) or alone. A turnstile lets a waiting solo holder in before
    shared holders that come after it, so a stream of short tests cannot starve it."""
    mode = fcntl.LOCK_EX if solo else fcntl.LOCK_SH
    with open(path, "a+") as main, open(f"{path}.turn", "a+") as turn:
        fcntl.flock(turn, mode)
        try:
            fcntl.flock(main, mode)
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Around setup, call and teardown (a module's reference run included), outside pytest-timeout's timer, so the
    wait for the lock never counts against a test's time limit."""
    path = os.environ.get(ENV)
    if not path:
        return (yield)
    with machine_share(Path(path), solo=item.get_closest_marker("solo") is not None):
        return (yield)
