"""Reaching a running worker's web server (reports and verify while it holds the embedded store).

chDB lets only one process open a store. While the worker runs on the embedded store it writes
`<data dir>/worker.json` with its web address; `flowaudit report|verify` read it and ask the worker,
which runs the query on its own store connection.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from flowaudit.common.settings import Settings


def worker_file(settings: Settings) -> Path:
    return settings.data_dir / "worker.json"


def write_worker_file(
    settings: Settings, bootstrap: str | None, pipeline_pid: int | None = None, web_token: str | None = None
) -> None:
    """Announce this worker: its web address (reports, verify) and the token its web API wants, the
    broker it uses, and the pid of its pipeline process (the one holding the store), if any. The
    file is the owner's alone (it holds the token)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    host = f"[{settings.web_bind}]" if ":" in settings.web_bind else settings.web_bind
    web = f"http://{host}:{settings.web_port}" if settings.web_port and web_token else ""
    info = {
        "pid": os.getpid(),
        "web": web,
        "web_token": web_token,
        "kafka_bootstrap": bootstrap,
        "pipeline_pid": pipeline_pid,
    }
    tmp = worker_file(settings).with_suffix(".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(info))
    tmp.replace(worker_file(settings))


def remove_worker_file(settings: Settings) -> None:
    path = worker_file(settings)
    try:
        info = json.loads(path.read_text())
        if info.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def read_worker_file(settings: Settings) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(worker_file(settings).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # stale file: that worker is gone
    return info


def running_worker(settings: Settings) -> tuple[str, str] | None:
    """(web address, token) of the worker running on this data directory, if it serves its web API."""
    info = read_worker_file(settings)
    if not info or not info.get("web"):
        return None
    return str(info["web"]), str(settings.web_token_value or info.get("web_token") or "")


def fetch_json(url: str, parameters: dict[str, Any], token: str, timeout: float = 600.0) -> Any:
    query = urllib.parse.urlencode(parameters)
    full = f"{url}?{query}" if query else url
    request = urllib.request.Request(full, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        from flowaudit.sinks.clickhouse import StoreError

        raise StoreError(f"the worker answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        from flowaudit.sinks.clickhouse import StoreError

        raise StoreError(f"cannot reach the worker at {url}: {exc}") from exc
