"""Coverage-guided fuzz targets (atheris) for the pure intake and normalize functions.

    python -m tests.reliability.fuzz_targets intake|normalize [libFuzzer flags] [corpus dirs]

A finding is an exception out of a target or a broken invariant:
- intake (`producer.intake.inspect_body`): only PayloadError may escape; a key is at most 128 characters of
  text without control characters (or the fallback key).
- normalize (`streams.normalize.rules.normalize`): never raises; never "internal error" (an exception it did not
  expect); the result serializes to JSON; no control character in any text it passes on; ids ≤ 128 chars.
`check(target, data)` is the same check without atheris: tests/reliability/test_atheris.py replays the kept
crash inputs (tests/reliability/fuzz_regressions/<target>/) through it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain", "", "application/vnd.api+json")
RESOURCES = ("", "clients", "appointments", "invoices")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def split(data: bytes) -> tuple[str, str, bytes]:
    """First byte picks the content type and the resource header; the rest is the body."""
    if not data:
        return CONTENT_TYPES[0], RESOURCES[0], b""
    pick = data[0]
    return CONTENT_TYPES[pick % len(CONTENT_TYPES)], RESOURCES[(pick // 8) % len(RESOURCES)], data[1:]


class Finding(AssertionError):
    """A broken invariant (the message names it, never the input)."""


def check_intake(data: bytes) -> None:
    from foundations.formats.raw import PayloadError
    from producer.intake import FALLBACK_KEY, inspect_body

    ctype, _resource, body = split(data)
    try:
        inspection = inspect_body(body, ctype)
    except PayloadError as exc:
        if not str(exc):
            raise Finding("PayloadError without a reason") from None
        return
    if inspection.key != FALLBACK_KEY:
        key = inspection.key.decode("utf-8")
        if len(key) > 128 or _CONTROL.search(key):
            raise Finding("unusable record key")


def _texts(value: Any) -> Any:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)


def check_normalize(data: bytes) -> None:
    import json

    from foundations.formats import headers as header_names
    from foundations.formats.normalized import NormalizedEvent, Skipped, Unreadable
    from streams.normalize.rules import normalize

    ctype, resource, body = split(data)
    headers = {header_names.CONTENT_TYPE: ctype, header_names.RECEIVED_AT: "2026-11-20T15:00:00.000+00:00"}
    if resource:
        headers[header_names.RESOURCE] = resource
    result = normalize(body, headers)
    if not isinstance(result, (NormalizedEvent, Skipped, Unreadable)):
        raise Finding(f"normalize returned {type(result).__name__}")
    if isinstance(result, Unreadable) and result.reason.startswith("internal error"):
        raise Finding(result.reason)
    dumped = json.loads(result.model_dump_json())
    if isinstance(result, NormalizedEvent):
        if any(_CONTROL.search(text) for text in _texts(dumped)):
            raise Finding("control character in a normalized event")
        if len(result.client.id) > 128:
            raise Finding("client id over 128 characters")


TARGETS = {"intake": check_intake, "normalize": check_normalize}


def check(target: str, data: bytes) -> None:
    TARGETS[target](data)


def main() -> None:
    import os

    import atheris

    # atheris measures coverage in Python bytecode: fuzz the pure Python normalizer, not the mypyc build (which
    # the tests of kept inputs run). Set before the first import of foundations (foundations/native.py).
    os.environ["APRO_PURE_PYTHON"] = "1"
    target = sys.argv[1]
    with atheris.instrument_imports(include=["producer", "streams", "foundations"]):
        import foundations.formats.raw  # noqa: F401
        import producer.intake  # noqa: F401
        import streams.normalize.event_kind  # noqa: F401
        import streams.normalize.rules  # noqa: F401
        import streams.normalize.values  # noqa: F401
    check_one = TARGETS[target]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
