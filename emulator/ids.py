"""GHL-style ids: 20 alphanumeric characters, deterministic from a seed (same seed → same id sequence)."""

from __future__ import annotations

import hashlib
import re

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_RE = re.compile(r"^[0-9A-Za-z]{20}$")


class IdGenerator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.counter = 0

    def new(self, kind: str) -> str:
        self.counter += 1
        return stable_id(f"{self.seed}:{kind}:{self.counter}")


def stable_id(text: str) -> str:
    """20 alphanumeric chars derived from `text` (used for configured objects without an explicit id)."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")
    out = []
    for _ in range(20):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)
