"""Coverage-guided fuzzing (atheris, libFuzzer) of the pure intake and normalize functions, bounded for CI.

Each target runs in its own process for FUZZ_SECONDS (APRO_LONG=1: 10 minutes), seeded with the sample
webhooks and the kept regression inputs. A finding fails the test and its input is copied to
tests/reliability/fuzz_regressions/<target>/, which `test_kept_inputs_pass` replays on every run: commit it.
The invariants are in tests/reliability/fuzz_targets.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO
from tests.reliability.fuzz_targets import TARGETS, Finding, check

LONG = os.environ.get("APRO_LONG") == "1"
FUZZ_SECONDS = 600 if LONG else 25
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


def _kept(target: str) -> list[Path]:
    return sorted(p for p in (REGRESSIONS / target).iterdir() if p.is_file() and not p.name.startswith("."))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kept_inputs_pass(target: str) -> None:
    kept = _kept(target)
    assert kept, f"no kept inputs for {target}"
    failures = []
    for path in kept:
        try:
            check(target, path.read_bytes())
        except (Finding, Exception) as exc:  # noqa: BLE001 - report every kept input that fails
            failures.append(f"{path.name}: {type(exc).__name__}: {exc}"[:200])
    assert not failures, failures


def test_invariants_catch_a_broken_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks are not vacuous: a normalizer that lets a NUL through, or crashes, is a finding."""
    import streams.normalize.rules as normalize_module

    fixture = b"\x00" + (FIXTURES / "client_created.json").read_bytes()
    check("normalize", fixture)
    original = normalize_module.normalize

    def lets_a_nul_through(raw: bytes, headers: object = None) -> object:
        # A wrapper, not a patched helper: the compiled normalizer calls its helpers natively (foundations/native.py).
        result = original(raw, headers)
        client = result.client.model_copy(update={"first_name": "Ja\x00ne"})  # type: ignore[union-attr]
        return result.model_copy(update={"client": client})

    monkeypatch.setattr(normalize_module, "normalize", lets_a_nul_through)
    with pytest.raises(Finding):
        check("normalize", fixture)
    monkeypatch.setattr(normalize_module, "normalize", original)
    monkeypatch.setattr("producer.intake.check_nesting", lambda raw: (_ for _ in ()).throw(RecursionError()))
    with pytest.raises(RecursionError):
        check("intake", b"\x00" + (FIXTURES / "client_created.json").read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in sorted(FIXTURES.glob("*.json")):
        for pick in (0, 1, 9):  # JSON, form and text/plain content types; with and without a resource
            (corpus / f"{pick}-{path.name}").write_bytes(bytes([pick]) + path.read_bytes())
    for path in _kept(target):
        shutil.copy(path, corpus / f"kept-{path.name}")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reliability.fuzz_targets", target, f"-max_total_time={FUZZ_SECONDS}",
         "-max_len=65536", "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/",
         "-print_final_stats=1", str(corpus)],
        cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120,
    )
    found = sorted(artifacts.iterdir())
    for path in found:
        keep = REGRESSIONS / target / path.name
        shutil.copy(path, keep)
    runs = [line for line in proc.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    print(f"\natheris {target}: {runs[-1].split(':')[-1].strip() if runs else '?'} runs in {FUZZ_SECONDS} s")
    assert proc.returncode == 0 and not found, (
        f"fuzzer finding in {target} (input kept under {REGRESSIONS / target}):\n" + proc.stderr[-3000:])
    assert runs and int(runs[-1].split(":")[-1]) > 1000  # it really ran
