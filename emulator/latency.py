"""Per-call latency with a tail: a lognormal fitted to a median and a 99th percentile, seeded, capped."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

from emulator.config import LatencyConfig

Z99 = NormalDist().inv_cdf(0.99)  # 2.326...: p99 of a lognormal is median * exp(sigma * Z99)


class LatencySampler:
    """Draws one delay (ms) per API call from `config`; the same seed gives the same sequence of delays."""

    def __init__(self, config: LatencyConfig | None) -> None:
        self.config = config
        self.rng = random.Random(config.seed if config else 0)
        if config is None:
            self.mu = self.sigma = 0.0
        else:
            self.mu = math.log(config.p50_ms)
            self.sigma = math.log(config.p99_ms / config.p50_ms) / Z99

    def draw_ms(self) -> float:
        if self.config is None:
            return 0.0
        if self.sigma == 0.0:
            return float(self.config.p50_ms)
        return min(self.rng.lognormvariate(self.mu, self.sigma), float(self.config.max_ms))

    def quantile_ms(self, q: float) -> float:
        """The distribution's own q-quantile (before the cap), to print next to measured figures."""
        if self.config is None:
            return 0.0
        return min(math.exp(self.mu + self.sigma * NormalDist().inv_cdf(q)), float(self.config.max_ms))
