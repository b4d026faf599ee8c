"""Which normalizer runs: the mypyc build (setup.py) when it is installed and current, else pure Python.

CI sets APRO_REQUIRE_COMPILED=1 (.ci/run): there the compiled modules must be the ones loaded, so the suite is
proven to have run them; the pure fallback is checked by the differential test in a subprocess.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundations import native
from tests.conftest import REPO

SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _import_all() -> dict[str, str]:
    for name in native.MODULES:
        importlib.import_module(name)
    return native.loaded()


def test_loaded_implementation_matches_the_decision() -> None:
    reason = native.install()
    expected = "compiled" if reason == "compiled" else "pure"
    assert _import_all() == {name: expected for name in native.MODULES}, reason
    if native.pure_asked():
        assert expected == "pure"
    elif os.environ.get("APRO_REQUIRE_COMPILED") == "1":
        assert expected == "compiled", f"CI expects the compiled normalizer: {reason}"


def test_compiled_modules_are_extensions() -> None:
    if native.install() != "compiled":
        if os.environ.get("APRO_REQUIRE_COMPILED") == "1" and not native.pure_asked():
            pytest.fail(f"CI expects the compiled normalizer: {native.install()}")
        pytest.skip(f"normalizer not compiled here: {native.install()}")
    _import_all()
    for name in native.MODULES:
        assert str(sys.modules[name].__file__).endswith(SUFFIXES), name
    assert str(sys.modules["streams.normalize.trusted"].__file__).endswith(".py")  # exec-generated: stays pure


def test_a_stale_or_missing_stamp_means_pure_python(tmp_path: Path) -> None:
    if native.pure_asked() or native.install() != "compiled":
        pytest.skip("needs the compiled build")
    stamp = tmp_path / native.STAMP
    stamp.write_text(native.stamp_text())
    assert native.decide(stamp) == "compiled"
    stamp.write_text(native.stamp_text().replace(" ", " 0", 1))  # one module's source digest differs
    with pytest.warns(RuntimeWarning, match="does not match its sources"):
        assert native.decide(stamp).startswith("compiled build is stale")
    with pytest.warns(RuntimeWarning):
        assert native.decide(tmp_path / "missing.txt").startswith("compiled build is stale")


def test_pure_fallback_passes_the_differential_test(tmp_path: Path) -> None:
    """The pure Python modules, in a subprocess (a process loads one implementation): 2,121 webhooks as
    recorded, and the loaded modules are the .py files."""
    if native.install() != "compiled":
        pytest.skip("this run is pure Python already: the whole suite tests it")
    env = {**os.environ, native.PURE_ENV: "1"}
    env.pop("APRO_REQUIRE_COMPILED", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}",
         "tests/streams/normalize/test_differential.py",
         "tests/foundations/test_native.py::test_loaded_implementation_matches_the_decision"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
