"""The machine-share lock CI's side-by-side passes use (tests/machine_share.py): shared holders run together, a solo
holder runs alone, and a waiting solo holder goes before shared holders that come after it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.machine_share import machine_share


class Holder(threading.Thread):
    def __init__(self, path: Path, solo: bool, log: list[str], name: str) -> None:
        super().__init__(daemon=True)
        self.path, self.solo, self.log, self.label = path, solo, log, name
        self.release = threading.Event()
        self.holding = threading.Event()

    def run(self) -> None:
        with machine_share(self.path, solo=self.solo):
            self.log.append(f"{self.label} in")
            self.holding.set()
            self.release.wait(10)
            self.log.append(f"{self.label} out")


def settled() -> None:
    time.sleep(0.2)  # let a blocked thread reach its flock; only ever lets a wrong order show, never hides one


def test_shared_holders_overlap_and_a_solo_one_waits_for_them_and_goes_before_later_ones(tmp_path: Path) -> None:
    path, log = tmp_path / "machine", []
    a, b = Holder(path, False, log, "a"), Holder(path, False, log, "b")
    a.start(), b.start()
    assert a.holding.wait(5) and b.holding.wait(5)  # shared: both hold at once
    solo = Holder(path, True, log, "solo")
    solo.start()
    settled()
    assert not solo.holding.is_set()
    late = Holder(path, False, log, "late")
    late.start()
    settled()
    assert not late.holding.is_set()  # behind the waiting solo holder
    a.release.set(), b.release.set()
    assert solo.holding.wait(5)
    settled()
    assert not late.holding.is_set()  # the solo holder is alone
    solo.release.set()
    assert late.holding.wait(5)
    late.release.set()
    for t in (a, b, solo, late):
        t.join(5)
    assert log.index("solo in") > max(log.index("a out"), log.index("b out"))
    assert log.index("late in") > log.index("solo out")
