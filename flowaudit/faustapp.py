"""For people used to Faust: `faust -A flowaudit.faustapp worker -l info`.

Builds the same runtime as `flowaudit worker` (settings from the environment) at import time.
"""

from __future__ import annotations

from flowaudit.runtime import build_runtime
from flowaudit.settings import Settings

runtime = build_runtime(Settings())
app = runtime.app
