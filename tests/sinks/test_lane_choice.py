"""Lane choice: a client's events always on one lane (their order), clients spread over every lane."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sinks.lane_choice import lane_index


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_a_client_always_gets_the_same_lane_whether_its_key_is_bytes_or_text(key: str, lanes: int) -> None:
    first = lane_index(key, lanes)
    assert 0 <= first < lanes
    assert lane_index(key, lanes) == first
    assert lane_index(key.encode(), lanes) == first


def test_clients_spread_over_every_lane() -> None:
    lanes = 8
    counts = Counter(lane_index(str(10_000 + n), lanes) for n in range(8_000))
    assert set(counts) == set(range(lanes))
    assert max(counts.values()) < 1.2 * min(counts.values())  # 1,000 each, within a fifth


def test_a_missing_key_has_one_lane_and_no_lanes_is_refused() -> None:
    assert lane_index(None, 4) == lane_index("", 4) == lane_index(b"", 4)
    with pytest.raises(ValueError):
        lane_index("48213", 0)
