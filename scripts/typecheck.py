"""mypy (strict) over the `flowaudit` package as it is installed, with errors named by source path.

Why this script: the package's parts live in top-level folders (`streams/` is `flowaudit.streams`,
see `[tool.setuptools.package-dir]` in pyproject.toml). Python finds them through the editable
install's import hook, but mypy maps files to modules by their folders only, so it would call
`streams/app.py` the module `streams.app`. Here the package is laid out once more as the wheel lays
it out, from symbolic links under `.build/typecheck/`, mypy checks that tree, and its messages are
turned back into the paths of the source folders.

Usage: python scripts/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / ".build" / "typecheck"


def package_dirs() -> dict[str, Path]:
    """`flowaudit.streams` -> <repo>/streams, as pyproject.toml maps them (top-level first)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {name: REPO / folder for name, folder in sorted(mapping.items())}


def build_tree(packages: dict[str, Path]) -> dict[Path, Path]:
    """Lay the packages out under TREE with links; returns tree path -> source folder."""
    shutil.rmtree(TREE, ignore_errors=True)
    links: dict[Path, Path] = {}
    for name, source in packages.items():
        target = TREE.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            if entry.suffix == ".py":  # sub-packages that are mapped get their own folder
                (target / entry.name).symlink_to(entry)
        links[target.relative_to(TREE)] = source.relative_to(REPO)
    return links


def to_source_path(line: str, links: dict[Path, Path]) -> str:
    """`flowaudit/streams/app.py:12: error …` -> `streams/app.py:12: error …`."""
    path, sep, rest = line.partition(":")
    if not sep or not path.endswith(".py"):
        return line
    folder = Path(path).parent
    source = links.get(folder)
    return f"{source / Path(path).name}{sep}{rest}" if source is not None else line


def main(arguments: list[str]) -> int:
    links = build_tree(package_dirs())
    cwd = Path.cwd()
    os.chdir(TREE)
    try:
        config = ["--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(REPO / ".mypy_cache")]
        stdout, stderr, status = api.run([*config, "-p", "flowaudit", *arguments])
    finally:
        os.chdir(cwd)
    for line in stdout.splitlines():
        print(to_source_path(line, links))
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
