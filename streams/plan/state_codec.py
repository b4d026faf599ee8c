"""The client_state table's value: a `ClientState` as compact text (pure, no I/O).

A state's JSON is ~3 KB, mostly keys and stamps every patient's record repeats; a million must fit a worker's
memory. Deflate primed with a frozen dictionary of those shapes keeps ~300 bytes, base64 so the value stays a str
(the table's JSON codec is unchanged). Plain JSON values still decode, so an upgraded worker reads an existing
changelog. Format and rules: docs/sync-engine.md, "Stored state encoding"."""

from __future__ import annotations

import base64
import binascii
import zlib
from importlib.resources import files

from streams.plan.state import ClientState

PREFIX = "z1:"  # the dictionary's version: a new dictionary gets a new prefix, the old one keeps decoding
# Frozen: values in changelogs were compressed against these exact bytes (tests/streams/plan/test_state_codec.py).
DICTIONARY = files("streams.plan").joinpath("state_dictionary_v1.txt").read_bytes()
LEVEL = 6
MAX_STATE_BYTES = 8 * 1024 * 1024  # far above any bounded state (streams/plan/horizon.py): a corrupt value stops here

_compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
_decompressor = zlib.decompressobj(-15, DICTIONARY)


class StateDecodeError(ValueError):
    """A table value that is no client state (the message names the problem, never the content)."""


def encode(state: ClientState) -> str:
    """The table value of `state` (done marks between state writes are their own small records: marks.py)."""
    raw = state.to_json()
    deflate = _compressor.copy()  # primed with the dictionary once, not per value
    return PREFIX + base64.b64encode(deflate.compress(raw) + deflate.flush()).decode("ascii")


def decode(value: str | bytes) -> ClientState:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value.startswith("{"):
        return ClientState.from_json(value)
    if not value.startswith(PREFIX):
        raise StateDecodeError("client state value in an unknown encoding")
    try:
        packed = base64.b64decode(value[len(PREFIX):], validate=True)
        inflate = _decompressor.copy()
        raw = inflate.decompress(packed, MAX_STATE_BYTES)
    except (binascii.Error, zlib.error, ValueError):
        raise StateDecodeError("client state value is corrupt") from None
    if inflate.unconsumed_tail:
        raise StateDecodeError(f"client state value inflates beyond {MAX_STATE_BYTES} bytes")
    return ClientState.from_json(raw)


__all__ = ["DICTIONARY", "PREFIX", "StateDecodeError", "decode", "encode"]
