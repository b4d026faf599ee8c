"""Kafka topic names, in one place so producer, workers and tools agree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    raw: str = "apro.webhooks.raw"
    quarantine: str = "apro.webhooks.quarantine"
    normalized: str = "apro.events.normalized"
    skipped: str = "apro.events.skipped"
    deadletter: str = "apro.deadletter"

    def all(self) -> list[str]:
        return [self.raw, self.quarantine, self.normalized, self.skipped, self.deadletter]

    @classmethod
    def with_prefix(cls, prefix: str) -> "Topics":
        """Topics under another prefix (tests use one prefix per test to stay isolated)."""
        base = cls()
        return cls(**{k: f"{prefix}{v}" for k, v in base.__dict__.items()})
