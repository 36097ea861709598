"""The ClickHouse HTTP interface over an embedded chDB store, for tests.

chDB opens a store path in one process only. Tests that need several processes on one audit store
(two workers in one consumer group) run this server in a process of its own and point the workers at
`FLOWAUDIT_CLICKHOUSE_URL=http://127.0.0.1:PORT/db`, so they also take the production client path:
clickhouse-connect's HttpClient, server-side parameter binding, settings as URL parameters, insert
bodies, response compression.

    python -m tests.clickhouse_http --path DIR --port PORT [--database NAME ...] [--ready-file FILE]

binds 127.0.0.1 only (port 0: the system picks one), creates the databases named (as the init script
of the production server does), prints `ready http://127.0.0.1:PORT` and writes the port to
`--ready-file` once it answers. SIGTERM or SIGINT stop it; `--exit-with-parent` also stops it when
the process that started it goes away. `ClickHouseHTTPServer` starts and stops one from a test.

What it answers (what clickhouse-connect's HTTP client sends, and what the project uses):
- `GET /ping`, `GET /` without a query, `/replicas_status`: `Ok.`;
- a query in the `query` URL parameter, in the POST body, or both (the parameter, a newline, then
  the body, as ClickHouse concatenates them); a `multipart/form-data` body, whose fields are request
  parameters (clickhouse-connect sends long bound parameters that way);
- `param_<name>` values bound server-side (chDB takes the same escaped text form as ClickHouse);
- every other URL parameter is a setting, applied with SET on the engine's connection for that
  request only (an unknown setting or bad value is the engine's error, as on a server); `database`
  (also the `X-ClickHouse-Database` header), `default_format` (also `X-ClickHouse-Format`),
  `query_id`, and the transport parameters (`session_id`, `wait_end_of_query`,
  `client_protocol_version`, `enable_http_compression`, progress headers, ...) are consumed here;
- `INSERT ... FORMAT <fmt>` followed by data: the data goes to the engine as an input stream in that
  format (any ClickHouse input format: ArrowStream, Native, RowBinary, CSV, ...), with the
  request's settings (`insert_deduplicate`, `insert_deduplication_token`) in force;
- request bodies with `Content-Encoding` lz4 (frames, as clickhouse-connect writes them), zstd,
  gzip, deflate, br (when the brotli module is there); responses compressed with the first of
  the client's `Accept-Encoding` methods this process can write when `enable_http_compression` is
  on (chDB's default for it is on, and the client reads that default from system.settings);
- any output format the engine has (the query's FORMAT clause, else `default_format`, else
  TabSeparated); `X-ClickHouse-Format` for statements that return a result, `Content-Type`,
  `X-ClickHouse-Query-Id`, `X-ClickHouse-Timezone`, `X-ClickHouse-Summary`;
- errors as ClickHouse sends them: HTTP 500, `X-ClickHouse-Exception-Code`, the exception text.

Not emulated (each refused with an error rather than done differently, where it can be told):
users, passwords and grants (any credentials are accepted, nothing is checked); HTTP sessions
(SET, USE and temporary tables would leak into every client of the one engine connection, so
they are refused; `session_id` is accepted and ignored); `client_protocol_version` (no block info:
clickhouse-connect's probe then falls back to protocol 0, as behind a proxy that drops the
parameter); ClickHouse's own block compression (`compress=1`/`decompress=1`); external data
(file parts of a multipart body); progress headers while a query runs; streaming (a result is
materialised, then sent; an error therefore always comes before any data); an empty Native result
has no header block (chDB writes no bytes for it). Requests run one at a time, under one lock.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

# ClickHouse error codes the shim raises itself
SYNTAX_ERROR = 62
UNKNOWN_FORMAT = 73
UNKNOWN_SETTING = 115
NOT_IMPLEMENTED = 48
READONLY = 164
CANNOT_DECOMPRESS = 271
STD_EXCEPTION = 1001

# Request parameters of the HTTP interface, not settings: consumed here, never SET on the engine.
TRANSPORT_PARAMETERS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "user",
        "password",
        "quota_key",
        "role",
        "session_id",
        "session_timeout",
        "session_check",
        "close_session",
        "stacktrace",
        "compress",
        "decompress",
        "client_protocol_version",
        "buffer_size",
        "wait_end_of_query",
        "readonly",
        # settings that only shape the HTTP response: handled (compression) or not emulated
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "http_native_compression_disable_checksumming_on_decompress",
    }
)
# chDB's own result kinds (Python objects), which the engine would accept as a format argument
_CHDB_PSEUDO_FORMATS = frozenset({"arrowtable", "dataframe", "datastore"})
# statements that return a result set (and may run under readonly)
_RESULT_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK"})
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_CODE = re.compile(r"Code: (\d+)")
_SPACE = b" \t\r\n\f\v"


class ShimError(Exception):
    """An error to answer as ClickHouse does: its code and its text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def engine_error(exc: BaseException) -> ShimError:
    """A chDB exception as a ClickHouse error (chDB's text is ClickHouse's: `Code: N. DB::Exception: ...`)."""
    text = str(exc).strip()
    start = text.find("Code: ")
    if start > 0:
        text = text[start:]
    match = _CODE.match(text)
    return ShimError(int(match[1]) if match else STD_EXCEPTION, text or type(exc).__name__)


# --- statements ---------------------------------------------------------------------------------------


@dataclass
class Word:
    text: bytes  # upper case
    start: int
    end: int
    depth: int  # bracket depth


def _skip_quoted(sql: bytes, i: int) -> int:
    quote = sql[i]
    j = i + 1
    while j < len(sql):
        if sql[j] == 0x5C:  # backslash escape
            j += 2
        elif sql[j] == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:  # doubled quote
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return len(sql)


def words(sql: bytes) -> Iterator[Word]:
    """The words of a statement, outside strings, quoted identifiers and comments, lazily: an INSERT's
    data after its FORMAT clause is never scanned."""
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c in _SPACE:
            i += 1
        elif sql.startswith(b"--", i) or sql.startswith(b"# ", i) or sql.startswith(b"#!", i):
            end = sql.find(b"\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith(b"/*", i):
            end = sql.find(b"*/", i + 2)
            i = n if end < 0 else end + 2
        elif c in b"'\"`":
            i = _skip_quoted(sql, i)
        elif c in b"([{":
            depth += 1
            i += 1
        elif c in b")]}":
            depth -= 1
            i += 1
        else:
            match = _WORD.match(sql, i)
            if match is None:
                i += 1
                continue
            yield Word(match[0].upper(), match.start(), match.end(), depth)
            i = match.end()


@dataclass
class Statement:
    kind: str  # the first keyword: SELECT, INSERT, CREATE, ...
    sql: bytes  # the statement (for an INSERT with data: up to its FORMAT clause)
    insert_format: str | None = None  # INSERT ... FORMAT <this> followed by data
    data: bytes = b""
    output_format: str | None = None  # the FORMAT clause of a query
    second: str = ""  # the second keyword (CREATE TEMPORARY ...)

    @property
    def returns_rows(self) -> bool:
        return self.kind in _RESULT_STATEMENTS


def parse_statement(text: bytes) -> Statement:
    """Split a request's text into the statement and, for `INSERT ... FORMAT x`, its data.

    The data starts after the format name: after the first newline if only whitespace comes before
    one, else after the whitespace (ClickHouse's rule), so binary data that starts with a byte
    that looks like whitespace is kept whole.
    """
    scan = words(text)
    first = next(scan, None)
    if first is None:
        raise ShimError(SYNTAX_ERROR, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
    second = next(scan, None)
    kind, second_text = first.text.decode(), second.text.decode() if second else ""
    pending = [second] if second else []
    if kind == "INSERT":
        for word in _chain(pending, scan):
            if word.text == b"FORMAT" and word.depth == 0:
                name = next(scan, None)
                if name is None:
                    break
                start = name.end
                while start < len(text) and text[start] in b" \t\r\f\v":
                    start += 1
                if start < len(text) and text[start] == 0x0A:
                    start += 1
                fmt = text[name.start : name.end].decode()
                return Statement(kind, text[: word.start].rstrip(), fmt, text[start:], second=second_text)
        return Statement(kind, text, second=second_text)
    top = [word for word in _chain(pending, scan) if word.depth == 0]
    output_format = None
    for index in range(len(top) - 2, -1, -1):
        tail = top[index + 2 :]
        if top[index].text == b"FORMAT" and (not tail or tail[0].text == b"SETTINGS"):
            output_format = text[top[index + 1].start : top[index + 1].end].decode()
            break
    return Statement(kind, text, output_format=output_format, second=second_text)


def _chain(first: list[Word], rest: Iterator[Word]) -> Iterator[Word]:
    yield from first
    yield from rest


# --- compression --------------------------------------------------------------------------------------


def _lz4_frame() -> Any:
    return importlib.import_module("lz4.frame")


def _zstd() -> Any:
    try:
        return importlib.import_module("backports.zstd")
    except ImportError:  # Python 3.14 has it in the standard library
        return importlib.import_module("compression.zstd")


def _brotli() -> Any:
    return importlib.import_module("brotli")


def decompress(data: bytes, encoding: str) -> bytes:
    """A request body as sent with `Content-Encoding` (concatenated frames or members included)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    try:
        if encoding == "lz4":  # one frame per block, as clickhouse-connect writes them
            frame = _lz4_frame()
            out = bytearray()
            rest = data
            while rest:
                decompressor = frame.LZ4FrameDecompressor()
                out += decompressor.decompress(rest)
                if not decompressor.eof:
                    raise ValueError("truncated lz4 frame")
                rest = decompressor.unused_data
            return bytes(out)
        if encoding == "zstd":
            return bytes(_zstd().decompress(data))
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
        if encoding == "br":
            return bytes(_brotli().decompress(data))
    except ImportError:
        pass
    except Exception as exc:
        message = f"Code: 271. DB::Exception: cannot decompress the {encoding} body: {exc}"
        raise ShimError(CANNOT_DECOMPRESS, message) from None
    raise ShimError(NOT_IMPLEMENTED, f"Code: 48. DB::Exception: Content-Encoding {encoding} is not supported")


def _compressors() -> dict[str, Callable[[bytes], bytes]]:
    available: dict[str, Callable[[bytes], bytes]] = {}
    with contextlib.suppress(ImportError):
        available["lz4"] = _lz4_frame().compress
    with contextlib.suppress(ImportError):
        available["zstd"] = _zstd().compress
    with contextlib.suppress(ImportError):
        available["br"] = _brotli().compress
    available["gzip"] = gzip.compress
    available["deflate"] = zlib.compress
    return available


COMPRESSORS = _compressors()


def choose_encoding(accept: str) -> str | None:
    """The first method of the client's Accept-Encoding list that this process can write."""
    for item in accept.split(","):
        name = item.split(";", 1)[0].strip().lower()
        if name in COMPRESSORS:
            return name
    return None


# --- the engine ---------------------------------------------------------------------------------------


@dataclass
class Request:
    text: bytes  # the query text, with an INSERT's data
    database: str
    settings: dict[str, str]
    parameters: dict[str, str]
    default_format: str
    readonly: bool


@dataclass
class Outcome:
    body: bytes
    output_format: str | None  # when the statement returns rows
    summary: dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class Engine:
    """The chDB store, one connection, one request at a time.

    A request's settings are SET on the connection before it runs; the next request's SETs start
    from what is applied (settings it does not ask for go back to DEFAULT), so a setting never
    outlives the request that asked for it, and a client that sends the same settings every time
    costs no SET after its first request.
    """

    def __init__(self, path: Path) -> None:
        chdb: Any = importlib.import_module("chdb")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.conn = chdb.connect(str(path))
        self.applied: dict[str, str] = {}
        version, zone = self._run("SELECT version(), timezone()").bytes().decode().strip().split("\t")
        self.version, self.timezone = version, zone
        compression = self._run("SELECT value FROM system.settings WHERE name = 'enable_http_compression'")
        self.http_compression_default = compression.bytes().decode().strip() == "1"

    def _run(self, sql: str, fmt: str = "TabSeparated", parameters: dict[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=parameters or {})
        except Exception as exc:
            raise engine_error(exc) from None

    def create_database(self, name: str) -> None:
        with self.lock:
            self._run(f"CREATE DATABASE IF NOT EXISTS {_identifier(name)}")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _apply(self, settings: dict[str, str]) -> None:
        for name in [name for name in self.applied if name not in settings]:
            self._run(f"SET {name} = DEFAULT")
            del self.applied[name]
        for name, value in settings.items():
            if self.applied.get(name) != value:
                if not _SETTING_NAME.match(name):
                    raise ShimError(UNKNOWN_SETTING, f"Code: 115. DB::Exception: Unknown setting '{name}'")
                self._run(f"SET {name} = {_quote(value)}")
                self.applied[name] = value

    def execute(self, request: Request) -> Outcome:
        statement = parse_statement(request.text)
        refuse_session_state(statement)
        if request.readonly and not statement.returns_rows:
            raise ShimError(
                READONLY, "Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)"
            )
        if request.default_format.lower() in _CHDB_PSEUDO_FORMATS:
            raise ShimError(
                UNKNOWN_FORMAT, f"Code: 73. DB::Exception: Unknown format {request.default_format}"
            )
        try:
            sql = statement.sql.decode()
        except UnicodeDecodeError:
            raise ShimError(
                NOT_IMPLEMENTED, "Code: 48. DB::Exception: the query text is not UTF-8 (chDB takes text)"
            ) from None
        with self.lock:
            self._run(f"USE {_identifier(request.database)}")
            self._apply(request.settings)
            if statement.insert_format is not None:
                return self._insert(sql, statement.insert_format, statement.data)
            result = self._run(sql, request.default_format, request.parameters)
        output_format = (
            (statement.output_format or request.default_format) if statement.returns_rows else None
        )
        body = bytes(result.bytes() or b"")
        return Outcome(
            body,
            output_format,
            {
                "read_rows": str(result.rows_read()),
                "read_bytes": str(result.bytes_read()),
                "written_rows": str(result.rows_written()),
                "written_bytes": str(result.bytes_written()),
                "result_bytes": str(len(body)),
                "elapsed_ns": str(int(result.elapsed() * 1e9)),
            },
        )

    def _insert(self, sql: str, fmt: str, data: bytes) -> Outcome:
        """Feed an INSERT's data to the engine as an input stream in its format (under the lock)."""
        try:
            with self.conn.send_insert(sql, fmt) as inserter:
                if data:
                    inserter.append(data)
                result = inserter.finish()
        except Exception as exc:
            raise engine_error(exc) from None
        return Outcome(
            b"",
            None,
            {
                "read_rows": "0",
                "read_bytes": "0",
                "written_rows": str(result.rows_written),
                "written_bytes": str(result.bytes_written),
                "elapsed_ns": str(int(result.elapsed * 1e9)),
            },
        )


def refuse_session_state(statement: Statement) -> None:
    """SET, USE and temporary tables belong to an HTTP session; the one engine connection would share
    them with every client, so they are refused (settings go in URL parameters, the database in
    ?database=)."""
    if statement.kind in ("SET", "USE") or (statement.kind == "CREATE" and statement.second == "TEMPORARY"):
        raise ShimError(
            NOT_IMPLEMENTED,
            f"Code: 48. DB::Exception: {statement.kind} keeps session state, which this chDB HTTP shim "
            "does not have (pass settings as URL parameters, the database as ?database=)",
        )


# --- HTTP ---------------------------------------------------------------------------------------------

_CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "xml": "application/xml; charset=UTF-8",
}


def content_type(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    lower = fmt.lower()
    if lower in _CONTENT_TYPES:
        return _CONTENT_TYPES[lower]
    if lower.startswith("json"):
        return "application/json; charset=UTF-8"
    if lower.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if lower.startswith(("pretty", "vertical", "markdown", "values", "template", "prettyspace")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


def parse_multipart(body: bytes, ctype: str) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, value) of each part of a multipart/form-data body."""
    match = re.search(r'boundary="?([^";]+)"?', ctype)
    if match is None:
        raise ShimError(SYNTAX_ERROR, "Code: 62. DB::Exception: multipart body without a boundary")
    delimiter = b"--" + match[1].encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, _, value = chunk.partition(b"\r\n\r\n")
        disposition = next(
            (
                line
                for line in head.decode("latin-1").split("\r\n")
                if line.lower().startswith("content-disposition")
            ),
            "",
        )
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        parts.append((name[1] if name else "", filename[1] if filename else None, value))
    return parts


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chdb-http-shim"
    engine: Engine
    log_requests = False

    def setup(self) -> None:
        super().setup()
        # an answer is one write (see _answer), sent at once: no Nagle wait for the client's ACK
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.log_requests:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        query_id = str(uuid.uuid4())
        try:
            body = self._read_body() if method == "POST" else b""
            url = urlsplit(self.path)
            if url.path in ("/ping", "/replicas_status"):
                self._answer(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"}, method)
                return
            if url.path != "/":
                self._answer(404, f"There is no handle {url.path}\n".encode(), {}, method)
                return
            parameters = dict(parse_qsl(url.query, keep_blank_values=True))
            if method != "POST" and "query" not in parameters:
                self._answer(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"}, method)
                return
            query_id = parameters.get("query_id") or query_id
            self._respond(method, body, parameters, query_id)
        except ShimError as exc:
            self._error(exc, query_id, method)
        except Exception as exc:  # a fault of the shim: still a ClickHouse-shaped answer
            self._error(
                ShimError(STD_EXCEPTION, f"Code: 1001. DB::Exception: {type(exc).__name__}: {exc}"),
                query_id,
                method,
            )

    def _respond(self, method: str, body: bytes, parameters: dict[str, str], query_id: str) -> None:
        body = decompress(body, self.headers.get("Content-Encoding", ""))
        ctype = self.headers.get("Content-Type", "")
        # only a multipart body is a form (a urlencoded one is the query, as `curl -d` sends it)
        form = ctype.lower().startswith("multipart/form-data")
        if form:
            for name, filename, value in parse_multipart(body, ctype):
                if filename is not None:
                    raise ShimError(
                        NOT_IMPLEMENTED, "Code: 48. DB::Exception: external data is not supported here"
                    )
                parameters[name] = value.decode()
        for reserved in ("compress", "decompress"):
            if parameters.get(reserved, "0") not in ("0", ""):
                raise ShimError(
                    NOT_IMPLEMENTED,
                    f"Code: 48. DB::Exception: {reserved}=1 (native block compression) is not supported",
                )
        query = parameters.get("query", "").encode()
        if form:
            text = query  # the fields were the body
        elif query and body:
            text = query + b"\n" + body
        else:
            text = query or body
        request = Request(
            text=text,
            database=parameters.get("database") or self.headers.get("X-ClickHouse-Database") or "default",
            settings={
                name: value
                for name, value in parameters.items()
                if name not in TRANSPORT_PARAMETERS and not name.startswith("param_")
            },
            parameters={name[6:]: value for name, value in parameters.items() if name.startswith("param_")},
            default_format=parameters.get("default_format")
            or self.headers.get("X-ClickHouse-Format")
            or "TabSeparated",
            readonly=method == "GET" or parameters.get("readonly", "0") not in ("0", ""),
        )
        outcome = self.engine.execute(request)
        headers = {
            "Content-Type": content_type(outcome.output_format),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": request.settings.get("session_timezone") or self.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(outcome.summary, separators=(",", ":")),
        }
        if outcome.output_format is not None:
            headers["X-ClickHouse-Format"] = outcome.output_format
        payload = outcome.body
        enabled = parameters.get("enable_http_compression")
        if payload and (enabled == "1" if enabled is not None else self.engine.http_compression_default):
            encoding = choose_encoding(self.headers.get("Accept-Encoding", ""))
            if encoding is not None:
                payload = COMPRESSORS[encoding](payload)
                headers["Content-Encoding"] = encoding
        self._answer(200, payload, headers, method)

    def _error(self, error: ShimError, query_id: str, method: str) -> None:
        text = error.message if error.message.endswith("\n") else error.message + "\n"
        self._answer(
            500,
            text.encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(error.code),
                "X-ClickHouse-Query-Id": query_id,
            },
            method,
        )

    def _answer(self, status: int, payload: bytes, headers: dict[str, str], method: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Type", "text/plain; charset=UTF-8")
        headers["X-ClickHouse-Server-Display-Name"] = "chdb-http-shim"
        headers["Content-Length"] = str(len(payload))
        for name, value in headers.items():
            self.send_header(name, value)
        self._headers_buffer.append(b"\r\n")  # end_headers(), with the body in the same write
        if method != "HEAD":
            self._headers_buffer.append(payload)
        try:
            self.flush_headers()
        except OSError:  # the client went away: nothing to tell it
            self.close_connection = True


def make_server(engine: Engine, port: int, *, log_requests: bool = False) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"engine": engine, "log_requests": log_requests})
    server = ThreadingHTTPServer((HOST, port), handler)
    server.daemon_threads = True
    return server


# --- the runner ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.clickhouse_http", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--path", type=Path, required=True, help="the chDB store directory")
    parser.add_argument("--port", type=int, default=8123, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--database", action="append", default=[], help="create this database (repeatable)")
    parser.add_argument("--ready-file", type=Path, help="write the port here once serving")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process goes")
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args(argv)

    engine = Engine(args.path)
    for name in args.database:
        engine.create_database(name)
    server = make_server(engine, args.port, log_requests=args.log_requests)
    port = int(server.server_address[1])
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="clickhouse-http", daemon=True)
    serving.start()
    if args.exit_with_parent:
        parent = os.getppid()

        def watch() -> None:
            while not stop.wait(0.5):
                if os.getppid() != parent:
                    stop.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if args.ready_file is not None:
        partial = args.ready_file.with_name(args.ready_file.name + ".partial")
        partial.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        partial.replace(args.ready_file)
    print(f"ready http://{HOST}:{port}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        engine.close()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


# --- for tests: start one, stop it ----------------------------------------------------------------------


class ClickHouseHTTPServer:
    """`python -m tests.clickhouse_http` in a subprocess on a free port; `stop` always ends it."""

    def __init__(
        self,
        path: Path,
        *,
        databases: Sequence[str] = (),
        log_path: Path | None = None,
        port: int = 0,
    ) -> None:
        self.path = path
        self.fixed_port = port
        self.databases = list(databases)
        self.log_path = log_path or path.with_name(path.name + ".http.log")
        self.ready_file = path.with_name(path.name + ".http.ready")
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the ClickHouse HTTP shim is not running")
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def start(self, timeout: float = 60) -> str:
        """Start it and wait until /ping answers `Ok.`; returns the base URL."""
        self.ready_file.unlink(missing_ok=True)
        # a fixed port survives a stop and a start (an outage of the store); 0 takes any free one
        command = [sys.executable, "-m", "tests.clickhouse_http", "--path", str(self.path)]
        command += ["--port", str(self.fixed_port)]
        command += ["--ready-file", str(self.ready_file), "--exit-with-parent"]
        for name in self.databases:
            command += ["--database", name]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the ClickHouse HTTP shim exited ({self.process.returncode}):\n{self.log()}"
                )
            if self.port is None and self.ready_file.exists():
                self.port = int(json.loads(self.ready_file.read_text())["port"])
            if self.port is not None and self.ping():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the ClickHouse HTTP shim did not answer /ping within {timeout:.0f} s:\n{self.log()}"
        )

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                return bool(response.read() == b"Ok.\n")
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 30) -> int | None:
        process, self.process = self.process, None
        self.port = None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)

    def __enter__(self) -> ClickHouseHTTPServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
