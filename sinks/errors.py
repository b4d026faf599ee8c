"""The sink's own permanent failures: an event or op that can never succeed as it is (dead-letter).

Each carries a short, PHI-free `reason` (ids and field names, never values), which becomes the dead letter's
`apro-reason` header."""

from __future__ import annotations


class SyncError(Exception):
    """A permanent, non-HTTP reason an op cannot run (dead-letter). `reason` is short and PHI-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdentityConflict(SyncError):
    """The upsert would overwrite another AestheticsPro client's contact (shared phone or email)."""


class UnreadableEvent(SyncError):
    """The normalized record does not parse (a bug upstream or a foreign producer on the topic)."""


__all__ = ["IdentityConflict", "SyncError", "UnreadableEvent"]
