"""Build hook: compiles the normalizer's hot modules (foundations/native.py MODULES) with mypyc at install time.

Optional: without a C compiler or Python headers, or with APRO_PURE_PYTHON=1, the install still succeeds and the
pure Python modules run; one warning line says so. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NATIVE = runpy.run_path(str(HERE / "foundations" / "native.py"))  # stdlib only: the module list and the stamp
PURE = NATIVE["pure_asked"]()


def warn(why: str) -> None:
    print(f"WARNING: apro-sync: the normalizer is not compiled ({why}); pure Python will run (slower, same results)",
          file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install, and stamps the sources it compiled (foundations/native.py)."""

    def run(self) -> None:
        stamp = NATIVE["stamp_text"](HERE)  # the sources as compiled, before anything could change them
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - compiler or linker missing or failing: fall back, never fail
            warn(f"{type(exc).__name__}: {str(exc)[:160]}")
            return
        targets = {Path(self.build_lib) / "foundations"}
        if self.inplace or getattr(self, "editable_mode", False):
            targets.add(HERE / "foundations")
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / NATIVE["STAMP"]).write_text(stamp)

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(Path(self.build_lib) / "foundations" / NATIVE["STAMP"])]


def extensions() -> list:
    if PURE:
        warn(f"{NATIVE['PURE_ENV']} is set")
        return []
    try:
        from mypyc.build import mypycify

        os.chdir(HERE)  # mypycify takes paths relative to the project
        paths = [str(NATIVE["source_path"](module, Path("."))) for module in NATIVE["MODULES"]]
        # Not pyproject's [tool.mypy] (its pydantic plugin is not in the build environment): the runtime
        # libraries are typed as Any here, which compiles to the same behaviour.
        options = ["--config-file", "", "--python-version", "3.11", "--ignore-missing-imports",
                   "--follow-imports", "silent"]
        return mypycify([*options, *paths], opt_level="3", group_name="apro_native")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - mypyc missing or failing: fall back, never fail
        warn(f"mypyc: {type(exc).__name__}")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
