from __future__ import annotations

import os
import re
import shutil

import pytest

from flowaudit.common.metrics import REGISTRY, WITNESS_REGISTRY


def require_tool(name: str) -> str:
    """The tool's path. In CI (.ci/run installs them) a missing tool fails; elsewhere it skips."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package: {'prometheus' if name == 'promtool' else name})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the worker (or the witness, `flowaudit witness`) can export, with its labels."""
    names: dict[str, set[str]] = {}
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
        "info": ["_info"],
    }
    for collector in [*REGISTRY._collector_to_names, *WITNESS_REGISTRY._collector_to_names]:
        describe = collector.describe() if hasattr(collector, "describe") else []
        for family in describe:
            labels = set(getattr(collector, "_labelnames", ()))
            if family.type == "info":
                labels.add("version")
            for suffix in suffixes.get(family.type, [""]):
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


METRIC = re.compile(r"\b(flowaudit_[a-z0-9_]+)\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def check_promql(expr: str, where: str) -> None:
    exported = exported_metrics()
    used = METRIC.findall(expr)
    assert used, f"{where}: no flowaudit metric in {expr!r}"
    labels: set[str] = set()
    for name in used:
        assert name in exported, f"{where}: metric {name} is not exported by the worker"
        labels |= exported[name]
    for group in BY.findall(expr):
        for label in (part.strip() for part in group.split(",") if part.strip()):
            assert label in labels, f"{where}: label {label!r} is not a label of {used}"
