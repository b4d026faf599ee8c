"""Fault injection: deterministic schedules ("next N requests") and seeded probabilities."""

from __future__ import annotations

import random
from dataclasses import dataclass

from emulator.config import FaultRule, FaultsConfig
from emulator.latency import LatencySampler


@dataclass
class _Active:
    rule: FaultRule
    remaining: int | None  # None = probabilistic, never runs out


class FaultPlan:
    def __init__(self, config: FaultsConfig) -> None:
        self.set(config)

    def set(self, config: FaultsConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.sampler = LatencySampler(config.latency)
        self.active = [_Active(r, r.count) for r in config.rules]

    def add(self, rules: list[FaultRule]) -> None:
        self.active.extend(_Active(r, r.count) for r in rules)

    @property
    def latency_ms(self) -> int:
        return self.config.latency_ms

    def call_delay_ms(self) -> float:
        """The delay every API call gets before any latency rule: the fixed part plus one random draw."""
        return self.config.latency_ms + self.sampler.draw_ms()

    def pick(self, method: str, template: str, location: str | None = None) -> list[FaultRule]:
        """Faults for this request: every matching latency rule, plus the first matching failure rule."""
        chosen: list[FaultRule] = []
        failure_chosen = False
        for a in self.active:
            r = a.rule
            if (r.method and r.method.upper() != method) or (r.path and r.path != template) \
                    or (r.location and r.location != location):
                continue
            if r.kind != "latency" and failure_chosen:
                continue
            if a.remaining is not None:
                if a.remaining <= 0:
                    continue
                a.remaining -= 1
            elif self.rng.random() >= r.probability:
                continue
            chosen.append(r)
            failure_chosen = failure_chosen or r.kind != "latency"
        self.active = [a for a in self.active if a.remaining is None or a.remaining > 0]
        return chosen

    def describe(self) -> dict:
        return {
            "seed": self.config.seed, "latency_ms": self.config.latency_ms,
            "latency": self.config.latency.model_dump() if self.config.latency else None,
            "rules": [{**a.rule.model_dump(), "remaining": a.remaining} for a in self.active],
        }
