"""For people used to Faust: `faust -A flowaudit.faustapp worker -l info`.

Builds the same runtime as `flowaudit worker` (settings from the environment) at import time,
serves the metrics, announces the worker in `<data dir>/worker.json`, and closes the store and the
embedded broker when the process exits.
"""

from __future__ import annotations

import atexit
import os

from flowaudit.common.settings import SettingsError, load_settings
from flowaudit.common.tuning import tune_process
from flowaudit.runtime import build_runtime, start_metrics_server
from flowaudit.sinks.clickhouse import StoreError
from flowaudit.streams.pipe import PipelineProcessError
from flowaudit.topics import TopicError
from flowaudit.webapi import remove_worker_file, write_worker_file

os.umask(0o077)  # owner-only files, as with `flowaudit worker`
try:
    settings = load_settings()
except SettingsError as exc:
    raise SystemExit(f"flowaudit: invalid setting {exc}") from None
tune_process()
try:
    runtime = build_runtime(settings)
except (StoreError, PipelineProcessError, TopicError) as exc:
    raise SystemExit(f"flowaudit: {exc}") from None
app = runtime.app
start_metrics_server(settings, runtime.metrics_registry)
write_worker_file(settings, runtime.bootstrap, runtime.pipeline_pid, runtime.web_token)


@atexit.register
def _close() -> None:
    runtime.close()
    remove_worker_file(settings)
