"""Which implementation of the normalizer's hot modules runs: the mypyc-compiled one (setup.py) or pure Python.

Stdlib only (setup.py reads MODULES from here). The compiled modules are used only when the build stamp matches
every module's source (a stale build after an edit falls back to pure Python with a one-line warning), and never
with APRO_PURE_PYTHON=1. docs/benchmarks.md, "2026-12-01: the normalizer compiled with mypyc".
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Compiled together (one mypyc group: they call each other natively), so all of them or none. No pydantic models
# are defined in these (they stay pure Python); trusted.py generates code with exec and stays pure too.
MODULES = (
    "foundations.formats.raw",
    "streams.normalize.fields",
    "streams.normalize.values",
    "streams.normalize.event_kind",
    "streams.normalize.rules",
)
STAMP = "native_build.txt"  # beside this file: "<module> <sha256 of its source>" per line, written by setup.py
PURE_ENV = "APRO_PURE_PYTHON"
ROOT = Path(__file__).resolve().parent.parent


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp_text(root: Path = ROOT) -> str:
    """The stamp of the sources under `root`, as setup.py writes it after a successful compile."""
    return "".join(f"{module} {source_digest(source_path(module, root))}\n" for module in MODULES)


def _compiled_files() -> list[Path]:
    candidates = (source_path(module).with_suffix(suffix) for module in MODULES
                  for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    return [path for path in candidates if path.is_file()]


def pure_asked() -> bool:
    return os.environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes")


def decide(stamp: Path = Path(__file__).with_name(STAMP)) -> str:
    """"compiled", or why pure Python runs."""
    if pure_asked():
        return f"{PURE_ENV} is set"
    if not _compiled_files():
        return "not compiled (no C compiler at install, or installed without it)"
    try:
        current = stamp.read_text() == stamp_text()
    except OSError:
        current = False
    if not current:
        warnings.warn("apro-sync: the compiled normalizer does not match its sources; running pure Python "
                      "(rebuild with `pip install -e .`)", RuntimeWarning, stacklevel=3)
        return "compiled build is stale (sources changed since the build)"
    return "compiled"


class _PureFinder:
    """A meta path finder that loads MODULES from their .py files, ahead of the compiled extensions."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        source = source_path(name)
        return importlib.util.spec_from_file_location(name, source) if source.is_file() else None


_REASON: str | None = None


def install() -> str:
    """Decide once per process (before any of MODULES is imported) and return "compiled" or why pure."""
    global _REASON
    if _REASON is None:
        _REASON = decide()
        if _REASON != "compiled":
            sys.meta_path.insert(0, _PureFinder())
    return _REASON


def loaded() -> dict[str, str]:
    """Module → "compiled" or "pure" for those of MODULES imported so far."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return {name: "compiled" if str(getattr(sys.modules[name], "__file__", "")).endswith(suffixes) else "pure"
            for name in MODULES if name in sys.modules}
