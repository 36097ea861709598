"""The floor plan, enforced: one import namespace, imports that only point down, short functions.

The package's parts live in top-level folders that pyproject.toml maps into `flowaudit.*`. These
tests read that mapping and every module's imports (function-local ones included) from the source.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Floors from the ground up. A module may import modules of its own floor or of a floor below.
FLOORS: dict[str, int] = {
    "flowaudit.policy": 0,  # data: the shipped policy files
    "flowaudit.schemas": 0,  # data: Avro schemas, DDL, report SQL
    "flowaudit.common": 1,  # settings, metric declarations, tuning
    "flowaudit.domain": 2,  # policy model and loader, event kinds, decision core, codec
    "flowaudit.sinks": 3,  # audit rows and chain, store, writer, verify, reports
    "flowaudit.streams": 4,  # pipeline steps, Faust app, second process, publisher
    "flowaudit": 5,  # the CLI and the runtime wiring
}
MAX_FUNCTION_LINES = 80


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {name: REPO / folder for name, folder in mapping.items()}


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    modules: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in folder.glob("*.py"):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _floor(module: str) -> int:
    part = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[part]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_mapped_folder_stands_on_a_floor() -> None:
    packages = set(_package_dirs())
    assert set(FLOORS) <= packages
    assert all(any(name == p or name.startswith(p + ".") for p in FLOORS) for name in packages)


def test_no_import_runs_back_up() -> None:
    upward = [
        f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _floor(target) > _floor(module)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    # the package's faces (`__init__`) are imported as parents of every module: not edges of a cycle
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [node, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_function_longer_than_the_limit() -> None:
    long = []
    for path in sorted(_modules().values()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert long == []


def test_the_domain_and_the_sinks_take_no_settings() -> None:
    """Lower floors take the arguments they need, not the whole settings object."""
    offenders = []
    for module, path in sorted(_modules().items()):
        if _floor(module) not in (FLOORS["flowaudit.domain"], FLOORS["flowaudit.sinks"]):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "Settings" for alias in node.names):
                offenders.append(module)
    assert offenders == []


def test_of_the_streams_only_the_faust_app_reads_the_settings() -> None:
    """The pipeline's steps and the second process get values; `flowaudit.runtime` does the wiring."""
    readers = []
    for module, path in sorted(_modules().items()):
        if _floor(module) != FLOORS["flowaudit.streams"] or module == "flowaudit.streams.app":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "Settings" for alias in node.names):
                readers.append(module)
    assert readers == []


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    # built from a copy of the tracked files: an in-tree build would leave build/ in the checkout
    source = tmp_path / "source"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("flowaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"flowaudit"}
    for expected in (
        "flowaudit/streams/app.py",
        "flowaudit/sinks/writer.py",
        "flowaudit/domain/decision.py",
        "flowaudit/common/settings.py",
        "flowaudit/policy/rules.yaml",
        "flowaudit/schemas/sql/audit.sql",
        "flowaudit/schemas/reports/user-disclosures.sql",
        "flowaudit/streams/static/flowmap.html",
        "flowaudit/streams/static/flowmap.js",
        "flowaudit/streams/static/flowmap.css",
        "flowaudit/data/catalog.yaml",
    ):
        assert expected in names
