"""House rules checked on the source: module docstrings of at most 6 lines, no one-letter module aliases."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("apro_sync", "foundations", "workarounds", "streams", "sinks", "producer", "emulator", "bench")
MAX_DOCSTRING_LINES = 6


def _sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def docstring_too_long(source: str) -> int | None:
    """The module docstring's line count when it is over the limit, else None."""
    docstring = ast.get_docstring(ast.parse(source), clean=False)
    if docstring is None:
        return None
    lines = len(docstring.strip().splitlines())
    return lines if lines > MAX_DOCSTRING_LINES else None


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):
        return False


def one_letter_module_aliases(source: str) -> list[str]:
    """`import x as H` and `from x import y as H` where x.y is a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name} as {a.asname}" for a in node.names if a.asname and len(a.asname) == 1]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if alias.asname and len(alias.asname) == 1 and _is_module(f"{node.module}.{alias.name}"):
                    found.append(f"from {node.module} import {alias.name} as {alias.asname}")
    return found


@pytest.mark.parametrize("path", _sources(*PRODUCT_PACKAGES), ids=lambda p: str(p.relative_to(REPO)))
def test_module_docstring_is_at_most_six_lines(path: Path) -> None:
    assert docstring_too_long(path.read_text(encoding="utf-8")) is None, "move history and figures to docs/"


def test_no_one_letter_module_aliases() -> None:
    offenders = {str(path.relative_to(REPO)): aliases for path in _sources(*PRODUCT_PACKAGES, "tests")
                 if (aliases := one_letter_module_aliases(path.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_the_checks_catch_a_violation() -> None:
    long_docstring = '"""Title.\n\n' + "a line\n" * MAX_DOCSTRING_LINES + '"""\n'
    assert docstring_too_long(long_docstring) == MAX_DOCSTRING_LINES + 2
    assert docstring_too_long('"""Title.\n\nWhy.\n"""\n') is None
    assert one_letter_module_aliases("import json as J\nfrom apro_sync import processes as P\n") == [
        "import json as J", "from apro_sync import processes as P"]
    assert one_letter_module_aliases("from decimal import Decimal as D\nimport json as jsonlib\n") == []
