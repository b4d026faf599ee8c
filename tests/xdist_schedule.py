"""How the suite spreads over pytest-xdist workers (`-n 2 --dist loadgroup`, README "Tests").

Each worker is its own session: its own broker (conftest's session fixtures) on free ports. A test module whose
tests share a module- or class-scoped fixture (a stack, a broker, a reference run) runs on one worker, so that
fixture starts once. Modules that start processes run first, so the short tests fill the end of the run.
"""

from __future__ import annotations

import pytest

SHARED_SCOPES = {"module", "class", "package"}
STARTS_PROCESSES = ("fresh_clone", "broker")  # markers, heaviest first


def _module_id(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _shares_a_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope in SHARED_SCOPES for defs in info.name2fixturedefs.values())


def schedule_for_workers(items: list[pytest.Item]) -> None:
    """Group the tests that share a fixture wider than a test; order modules heaviest first (stable, and the
    same on every worker, as xdist requires)."""
    rank: dict[str, int] = {}
    for item in items:
        module = _module_id(item)
        marks = [index for index, name in enumerate(STARTS_PROCESSES) if item.get_closest_marker(name)]
        rank[module] = min([rank.get(module, len(STARTS_PROCESSES)), *marks])
        if _shares_a_fixture(item):
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=lambda item: rank[_module_id(item)])
