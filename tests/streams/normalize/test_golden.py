"""Every webhook fixture against a hand-written expected result (tests/streams/normalize/golden/<fixture>.json),
field by field."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from foundations.formats.normalized import NormalizedEvent, Skipped, Unreadable
from streams.normalize.rules import normalize
from tests.conftest import FIXTURES

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
HEADERS = {"apro-received-at": "2026-12-01T00:00:05Z", "apro-resource": "", "content-type": "application/json"}
TYPES = {"NormalizedEvent": NormalizedEvent, "Skipped": Skipped, "Unreadable": Unreadable}


def _is_instant(text: str) -> bool:
    return len(text) > 10 and text[4:5] == "-" and "T" in text


def _compare(path: str, expected: Any, actual: Any, problems: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            problems.append(f"{path}: expected an object, got {actual!r}")
            return
        for key, value in expected.items():
            _compare(f"{path}.{key}", value, actual.get(key), problems)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            problems.append(f"{path}: expected {len(expected)} items, got {actual!r}")
            return
        for i, (e, a) in enumerate(zip(expected, actual)):
            _compare(f"{path}[{i}]", e, a, problems)
    elif isinstance(expected, str) and _is_instant(expected):
        exp = datetime.fromisoformat(expected.replace("Z", "+00:00"))
        act = datetime.fromisoformat(actual.replace("Z", "+00:00")) if isinstance(actual, str) else None
        if act != exp or act.utcoffset() is None:
            problems.append(f"{path}: expected {expected}, got {actual!r}")
    elif expected != actual:  # Decimals compare as their exact JSON strings ("1150.00")
        problems.append(f"{path}: expected {expected!r}, got {actual!r}")


def test_every_fixture_has_a_golden() -> None:
    assert NAMES and sorted(p.stem for p in GOLDEN.glob("*.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fixture_matches_golden(name: str) -> None:
    raw = (FIXTURES / f"{name}.json").read_bytes()
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    result = normalize(raw, HEADERS)
    assert type(result).__name__ == golden["result"], getattr(result, "reason", result)
    expected = dict(golden["expected"])
    if expected.get("event_id") == "sha256-of-body":
        expected["event_id"] = hashlib.sha256(raw).hexdigest()
    actual = result.model_dump(mode="json")
    problems: list[str] = []
    _compare(name, expected, actual, problems)
    assert not problems, "\n".join(problems)
    # Received-at comes from the producer's header; nothing was dropped as invalid in the reference shapes.
    if isinstance(result, (NormalizedEvent, Skipped)):
        assert result.received_at == datetime.fromisoformat("2026-12-01T00:00:05+00:00")
    if isinstance(result, NormalizedEvent):
        assert result.invalid_fields == ()
        # The golden lists every top-level field of the contract that matters for the planner.
        for field in ("event_id", "kind", "occurred_at", "location", "client", "appointment", "invoice"):
            assert field in expected, f"golden {name} misses {field}"
