"""Assembling and running the stream service: broker, audit store, sink, publisher, Faust app.

`build_runtime` is shared by `flowaudit worker`, `flowaudit demo` and `faust -A flowaudit.faustapp`.
Without `FLOWAUDIT_KAFKA_URL` it starts the embedded development broker in this process and
creates the topics; with it, the topics must exist on the cluster (checked before anything starts).
The web API's token is FLOWAUDIT_WEB_TOKEN, or one made here for this run and announced, with the
web address, in the owner-only `<data dir>/worker.json` that `flowaudit report|verify` read.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from flowaudit.broker import EmbeddedBroker
from flowaudit.common import metrics
from flowaudit.common.settings import Settings, kafka_bootstrap
from flowaudit.common.tuning import tune_process
from flowaudit.domain.checkpoint import NoteSigner
from flowaudit.domain.kinds import INPUT_KINDS
from flowaudit.domain.ledger import StreamLedger
from flowaudit.domain.policy import Policy, load_policy
from flowaudit.sinks.clickhouse import AuditStore, StoreError, load_chain_key
from flowaudit.sinks.merkle_log import LogKeyError, load_log_signer
from flowaudit.sinks.reader import StoreReader
from flowaudit.sinks.writer import ClickHouseSink
from flowaudit.streams.app import (
    BatchObserver,
    BatchRunner,
    FlowauditApp,
    LedgerLoader,
    LocalLedger,
    crash_from_thread,
    create_app,
    input_topic,
    ledger_changelog_topic,
)
from flowaudit.streams.measure import zero_policy_series
from flowaudit.streams.pipe import PipelineConfig, PipelineProcessError
from flowaudit.streams.pipeline import LocalPipeline, batch_processors
from flowaudit.streams.pipeline_process import PipelineMetrics, PipelineProcess, RemotePipeline
from flowaudit.streams.publish import KafkaPublisher
from flowaudit.streams.route import Topics
from flowaudit.streams.web import NoReaderViews, StoreViews, WebGuard
from flowaudit.topics import TopicError, check_topics

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    policy: Policy
    broker: EmbeddedBroker | None
    bootstrap: str
    store_url: str
    publisher: KafkaPublisher
    app: FlowauditApp
    # what holds the audit store: a second process (settings.pipeline_process), or a sink in this one
    store_owner: PipelineProcess | ClickHouseSink
    metrics_registry: CollectorRegistry
    web_token: str | None  # None when the web API is off
    reader: StoreReader | None = None  # the reader role's connection for the web API (a server store)

    @property
    def pipeline_pid(self) -> int | None:
        return self.store_owner.pid if isinstance(self.store_owner, PipelineProcess) else None

    @property
    def masked_store_url(self) -> str:
        return self.store_owner.masked_url

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.store_owner.close()
        if self.broker is not None:
            self.broker.stop()


def input_kinds() -> list[str]:
    """Every input kind the worker consumes: the flow kinds and the consent kind (`INPUT_KINDS`)."""
    return list(INPUT_KINDS)


def all_topics(settings: Settings) -> list[str]:
    """The topics the worker needs: checked on a real cluster before it starts (`check_topics`), and
    created on the embedded broker. The input topics (flows and consents) and the consent ledger's
    changelog have one partition count: producers key every record by `user_id` (contract v2 §1),
    so a subject's consents, flows and ledger entry share a partition number."""
    return [
        *(input_topic(settings, kind) for kind in input_kinds()),
        ledger_changelog_topic(settings.consumer_group),
        settings.topic_approved,
        settings.topic_blocked,
        settings.topic_dead_letter,
        settings.topic_checkpoints,
    ]


def start_embedded_broker(settings: Settings) -> EmbeddedBroker:
    broker = EmbeddedBroker().start()
    # one count: co-partitioned; the witness's topic too (only the witness writes it)
    broker.create_topics([*all_topics(settings), settings.topic_witnessed], settings.topic_partitions)
    return broker


def start_metrics_server(settings: Settings, registry: CollectorRegistry = metrics.REGISTRY) -> None:
    if not settings.metrics_port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_bind, registry=registry)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_bind, settings.metrics_port)
    except OSError as exc:
        log.error("metrics endpoint not started on port %d: %s", settings.metrics_port, exc)


def build_runtime(
    settings: Settings,
    *,
    observer: BatchObserver | None = None,
    policy: Policy | None = None,
    web_enabled: bool = True,
) -> Runtime:
    """Start the broker (embedded, unless FLOWAUDIT_KAFKA_URL) and the store's writer; build the app.

    Raises StoreError when the audit store cannot be opened, PipelineProcessError when the pipeline
    process does not start, TopicError when the cluster lacks a topic (or does not answer).
    """
    policy = policy or load_policy(settings.policy_dir)
    metrics.POLICY.info({"version": policy.version})
    zero_policy_series(settings.input_topics, policy)
    broker = None
    if settings.kafka_url:
        bootstrap = kafka_bootstrap(settings.kafka_url)
        partitions = check_co_partitioned(settings, check_topics(bootstrap, all_topics(settings)))
    else:
        broker = start_embedded_broker(settings)
        bootstrap = broker.bootstrap
        partitions = settings.topic_partitions
    publisher = KafkaPublisher(bootstrap)
    chain_key = load_chain_key(settings.chain_key_value, settings.data_dir)
    try:
        signer = load_log_signer(settings.checkpoint_key_value, settings.data_dir, settings.log_name)
    except LogKeyError as exc:
        if broker is not None:
            broker.stop()
        raise StoreError(str(exc)) from None
    start = _start_two_processes if settings.pipeline_process else _start_one_process
    guard = _web_guard(settings) if web_enabled else None
    try:
        store_owner, runners, registry, ledger = start(settings, policy, (chain_key, signer), publisher)
        try:  # after the writer: it creates the table the reader opens
            reader, views = _web_views(settings, policy, chain_key) if guard is not None else (None, None)
        except Exception:
            store_owner.close()
            raise
    except Exception:
        if broker is not None:
            broker.stop()
        raise
    app = create_app(
        settings,
        bootstrap,
        runners,
        publisher,
        store_owner,
        observer=observer,
        web_guard=guard,
        web_views=views,
        ledger=ledger,
        ledger_partitions=partitions,
        policy=policy,
    )
    if isinstance(store_owner, PipelineProcess):
        store_owner.on_death = functools.partial(crash_from_thread, app)
    store_url = settings.resolved_clickhouse_url
    token = guard.token if guard is not None else None
    return Runtime(
        settings, policy, broker, bootstrap, store_url, publisher, app, store_owner, registry, token, reader
    )


def _web_guard(settings: Settings) -> WebGuard:
    """The web API's token (FLOWAUDIT_WEB_TOKEN, or one made for this run) and its host names."""
    token = settings.web_token_value or secrets.token_urlsafe(32)
    hosts = [host.strip() for host in settings.web_allowed_hosts.split(",") if host.strip()]
    return WebGuard.for_server(token, settings.web_bind, settings.web_port, hosts)


def _web_views(
    settings: Settings, policy: Policy, chain_key: bytes
) -> tuple[StoreReader | None, StoreViews | None]:
    """What the web API reads with: the writer's store for chDB (no roles: the default, None), the
    reader role for a ClickHouse server, or nothing there when no reader URL is set."""
    if settings.resolved_clickhouse_url.startswith("chdb:"):
        return None, None
    if settings.clickhouse_reader_url is None:
        return None, NoReaderViews()
    reader = StoreReader(settings.clickhouse_reader_url, policy, chain_key)
    return reader, reader


def output_topics(settings: Settings) -> Topics:
    return Topics(
        settings.topic_approved,
        settings.topic_blocked,
        settings.topic_dead_letter,
        settings.topic_checkpoints,
    )


def check_co_partitioned(settings: Settings, counts: dict[str, int]) -> int:
    """The partition count shared by the input topics and the consent ledger's changelog; TopicError
    when they differ: the ledger's table is keyed by user_id like the flows, and a flow finds its
    subject's consents on this worker only if every topic splits the users the same way."""
    topics = [
        *(input_topic(settings, kind) for kind in input_kinds()),
        ledger_changelog_topic(settings.consumer_group),
    ]
    found = {topic: counts[topic] for topic in topics}
    if len(set(found.values())) > 1:
        listing = ", ".join(f"{topic} {count}" for topic, count in found.items())
        variables = ", ".join(
            f"FLOWAUDIT_{INPUT_KINDS[kind].topic_setting.upper()}" for kind in input_kinds()
        )
        raise TopicError(
            f"the input topics and the consent ledger's changelog must have the same number of "
            f"partitions (co-partitioned by user_id), found: {listing} (topics set by {variables}, "
            "FLOWAUDIT_CONSUMER_GROUP)"
        )
    return found[topics[0]]


def _start_two_processes(
    settings: Settings, policy: Policy, keys: tuple[bytes, NoteSigner], publisher: KafkaPublisher
) -> tuple[PipelineProcess, list[BatchRunner], CollectorRegistry, LedgerLoader]:
    """The store, deciding and writing in a second process; forwarding here. Metrics: both processes'."""
    chain_key, signer = keys
    config = PipelineConfig(
        checkpoint_key=signer.skey,
        kinds=tuple(input_kinds()),
        policy=policy,
        store_url=settings.resolved_clickhouse_url,
        chain_key=chain_key,
        insert_retry_max_seconds=settings.insert_retry_max_seconds,
        consent_write_delay_seconds=settings.consent_write_delay_seconds,
        invalid_ratio_limit=settings.invalid_ratio_limit,
        invalid_ratio_window=settings.invalid_ratio_window,
        loglevel=logging.getLogger().getEffectiveLevel(),
    )
    pipeline = PipelineProcess(config)
    topics = output_topics(settings)
    runners: list[BatchRunner] = [RemotePipeline(kind, pipeline, publisher, topics) for kind in config.kinds]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineMetrics(pipeline))
    return pipeline, runners, registry, pipeline


def _start_one_process(
    settings: Settings, policy: Policy, keys: tuple[bytes, NoteSigner], publisher: KafkaPublisher
) -> tuple[ClickHouseSink, list[BatchRunner], CollectorRegistry, LedgerLoader]:
    """Everything in this process (FLOWAUDIT_PIPELINE_PROCESS=false)."""
    chain_key, signer = keys
    store = AuditStore(settings.resolved_clickhouse_url, policy, chain_key, log_signer=signer)
    store.connect()
    sink = ClickHouseSink(
        store,
        settings.insert_retry_max_seconds,
        consent_delay_seconds=settings.consent_write_delay_seconds,
    )
    ledger = StreamLedger()
    processors = batch_processors(
        input_kinds(),
        policy,
        sink,
        settings.invalid_ratio_limit,
        settings.invalid_ratio_window,
        ledger,
    )
    topics = output_topics(settings)
    runners: list[BatchRunner] = [LocalPipeline(processor, publisher, topics) for processor in processors]
    return sink, runners, metrics.REGISTRY, LocalLedger(ledger)


def make_worker(app: FlowauditApp, loglevel: str = "WARNING") -> Any:
    from faust.worker import Worker

    # Faust's terminal decorations (cursor codes) go to stderr: stdout is for results (--json).
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, stdout=sys.stderr)
    # No progress spinner: at WARNING and above, Faust's spinner sets the root logger to DEBUG so it
    # can spin on every record, and every library's debug call then builds a LogRecord (aiokafka logs
    # each request and batch): ~2% of the GIL-holding samples in a py-spy profile of bench/stream.py.
    worker.spinner = None
    return worker


def run_worker(settings: Settings, loglevel: str = "INFO") -> int:
    """`flowaudit worker`: run until SIGTERM/SIGINT; exit 0 after a clean stop."""
    from flowaudit.webapi import remove_worker_file, write_worker_file

    tune_process()
    logging.basicConfig(
        level=getattr(logging, loglevel), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("settings: %s", settings)
    try:
        runtime = build_runtime(settings)
    except (StoreError, PipelineProcessError, TopicError) as exc:
        print(f"flowaudit worker: {exc}", file=sys.stderr)
        return 2
    start_metrics_server(settings, runtime.metrics_registry)
    write_worker_file(settings, runtime.bootstrap, runtime.pipeline_pid, runtime.web_token)
    log.info(
        "worker consuming %s from %s; audit store %s",
        ", ".join(input_topic(settings, kind) for kind in input_kinds()),
        runtime.bootstrap,
        runtime.masked_store_url,
    )
    worker = make_worker(runtime.app, loglevel)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        runtime.close()
        remove_worker_file(settings)
    if runtime.app.fatal_error is not None:
        print(f"flowaudit worker stopped: {runtime.app.fatal_error}", file=sys.stderr)
        return 3
    return code
