"""Which lane runs a client's events: a stable hash of the client key, so one client's events run in order on
one lane while different clients spread over all lanes (pure)."""

from __future__ import annotations

import zlib


def lane_index(client_key: bytes | str | None, lanes: int) -> int:
    """The lane (0 ≤ index < `lanes`) for `client_key`; the same key always gets the same lane, whichever type."""
    if lanes < 1:
        raise ValueError("lanes must be at least 1")
    data = client_key if isinstance(client_key, bytes) else str(client_key or "").encode()
    return zlib.crc32(data) % lanes


__all__ = ["lane_index"]
