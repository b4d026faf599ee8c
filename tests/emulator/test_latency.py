"""The emulator's tailed call latency: quantiles of the seeded lognormal, reproducibility, and its use per call."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from emulator import EmulatorConfig, LatencyConfig, LocationConfig, load_config
from emulator.faults import FaultPlan
from emulator.latency import LatencySampler
from emulator.server import EMU
from tests.ghl_emulator_fixture import LOCATION_1, TOKEN_1


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[int(q * (len(xs) - 1))]


@pytest.mark.parametrize(("p50", "p99"), [(50.0, 250.0), (20.0, 400.0)])
def test_draws_have_the_configured_median_and_p99(p50: float, p99: float) -> None:
    sampler = LatencySampler(LatencyConfig(p50_ms=p50, p99_ms=p99, seed=11))
    draws = [sampler.draw_ms() for _ in range(100_000)]
    assert _quantile(draws, 0.50) == pytest.approx(p50, rel=0.03)
    assert _quantile(draws, 0.99) == pytest.approx(p99, rel=0.06)
    assert _quantile(draws, 0.90) == pytest.approx(sampler.quantile_ms(0.90), rel=0.04)
    assert min(draws) > 0
    # a tail, not a constant: the mean sits above the median, as a lognormal's does
    assert sum(draws) / len(draws) > 1.1 * p50


def test_same_seed_same_delays_other_seed_other_delays() -> None:
    config = LatencyConfig(p50_ms=50, p99_ms=250, seed=3)
    first = [LatencySampler(config).draw_ms() for _ in range(1)]
    a, b = LatencySampler(config), LatencySampler(config)
    assert [a.draw_ms() for _ in range(50)] == [b.draw_ms() for _ in range(50)]
    other = LatencySampler(config.model_copy(update={"seed": 4}))
    assert [other.draw_ms() for _ in range(1)] != first


def test_equal_quantiles_mean_constant_and_the_cap_holds() -> None:
    constant = LatencySampler(LatencyConfig(p50_ms=50, p99_ms=50))
    assert {constant.draw_ms() for _ in range(100)} == {50.0}
    capped = LatencySampler(LatencyConfig(p50_ms=50, p99_ms=2000, max_ms=300, seed=1))
    draws = [capped.draw_ms() for _ in range(10_000)]
    assert max(draws) == 300.0 and _quantile(draws, 0.5) == pytest.approx(50, rel=0.05)
    assert LatencySampler(None).draw_ms() == 0.0


def test_config_rejects_p99_below_p50_and_nonpositive_values() -> None:
    with pytest.raises(ValidationError):
        LatencyConfig(p50_ms=100, p99_ms=50)
    with pytest.raises(ValidationError):
        LatencyConfig(p50_ms=0, p99_ms=50)


def test_yaml_config_sets_the_distribution_on_top_of_the_fixed_latency(tmp_path) -> None:
    path = tmp_path / "emu.yaml"
    path.write_text("faults:\n  latency_ms: 5\n  latency: {p50_ms: 40, p99_ms: 200, seed: 9}\n")
    config = load_config(path)
    plan = FaultPlan(config.faults)
    reference = LatencySampler(LatencyConfig(p50_ms=40, p99_ms=200, seed=9))
    assert [plan.call_delay_ms() for _ in range(20)] == [5 + reference.draw_ms() for _ in range(20)]


@pytest.fixture
def ghl_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(seed=7, locations=[LocationConfig(id=LOCATION_1, token=TOKEN_1)])


def test_every_api_call_draws_one_delay(ghl_emulator) -> None:
    """Set over the inspection API; after N API calls the server's sampler stands where a fresh one stands after N
    draws (so each call drew exactly one delay), and inspection calls draw none."""
    latency = {"p50_ms": 1, "p99_ms": 5, "max_ms": 20, "seed": 21}
    with httpx.Client(base_url=ghl_emulator.base_url, headers=ghl_emulator.headers(), timeout=10) as c:
        shown = c.post("/_emulator/faults", json={"latency": latency}).json()
        assert shown["latency"] == latency
        for _ in range(7):
            assert c.get("/workflows/", params={"locationId": ghl_emulator.location_id}).status_code == 200
        c.get("/_emulator/faults")
    server_sampler = ghl_emulator._call(lambda: ghl_emulator.server.app[EMU].faults.sampler)
    reference = LatencySampler(LatencyConfig(**latency))
    for _ in range(7):
        reference.draw_ms()
    assert server_sampler.draw_ms() == reference.draw_ms()
