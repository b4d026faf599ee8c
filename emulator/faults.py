"""Fault injection: deterministic schedules ("next N requests") and seeded probabilities."""

from __future__ import annotations

import random
from dataclasses import dataclass

from emulator.config import FaultRule, FaultsConfig


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
        self.active = [_Active(r, r.count) for r in config.rules]

    def add(self, rules: list[FaultRule]) -> None:
        self.active.extend(_Active(r, r.count) for r in rules)

    @property
    def latency_ms(self) -> int:
        return self.config.latency_ms

    def pick(self, method: str, template: str) -> list[FaultRule]:
        """Faults for this request: every matching latency rule, plus the first matching failure rule."""
        chosen: list[FaultRule] = []
        failure_chosen = False
        for a in self.active:
            r = a.rule
            if (r.method and r.method.upper() != method) or (r.path and r.path != template):
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
            "rules": [{**a.rule.model_dump(), "remaining": a.remaining} for a in self.active],
        }
