#!/usr/bin/env bash
# Lays the package out as the wheel installs it (flowaudit/streams/..., flowaudit/sinks/...) under
# .build/installed, as a git repository of its own, for tools that read imports by path and do not
# know pyproject.toml's package-dir mapping (farm-studio: `farm-studio look --repo .build/installed`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.build/installed
source=.build/installed-source  # built from the committed tree: an in-tree build would leave build/
rm -rf "$out" "$source"
mkdir -p "$source"
git archive HEAD | tar -x -C "$source"
.venv/bin/python -m pip install --quiet --no-deps --target "$out" "$source" >/dev/null
rm -rf "$source"
rm -rf "$out"/*.dist-info "$out"/bin
git -C "$out" init --quiet
git -C "$out" add --all
git -C "$out" -c user.name=flowaudit -c user.email=flowaudit@localhost commit --quiet -m "installed layout"
echo "$out"
