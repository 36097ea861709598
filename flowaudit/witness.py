"""`flowaudit witness`: read the checkpoints topic, check each checkpoint extends what was witnessed,
cosign it, keep the latest per chain in a state file of the witness's own (never in the audit store).

- The judgement is `domain.witness` (pure). Consistency proofs are read from the store with read
  access only (`StoreProofs`: the reader role, or the embedded store when no worker holds it) or
  through the running worker's web API (`WorkerProofs`, bearer token) when it holds the embedded
  store. They are checked against the two signed roots, so the store is not trusted.
- State: `--state FILE` (JSON: the log's vkey, the witness's vkey, per chain the latest cosigned
  tree and note, and the next offset to read of each partition of the checkpoints topic), replaced
  atomically after each poll. The offsets are kept there, not committed to a consumer group, so the
  witness writes nothing but its state and the cosigned notes; a restart re-reads what was not kept
  (judging a checkpoint twice is harmless). Its key is `<state>.key` (made at first start, mode
  0600) and its public key `<state>.pub`.
- Each cosigned note is published to FLOWAUDIT_TOPIC_WITNESSED. Alerts: a fork or a shrink is
  logged at ERROR and counted (`flowaudit_witness_consistency_failures_total`); a chain that stops
  advancing shows in `flowaudit_witness_chain_advanced_timestamp_seconds` (deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowaudit.common import metrics
from flowaudit.common.settings import Settings, kafka_bootstrap
from flowaudit.domain.checkpoint import CheckpointError, CosignatureSigner, NoteVerifier, parse_vkey
from flowaudit.domain.witness import ALARMS, COSIGNED, Observation, ProofUnavailable, Witness
from flowaudit.sinks.merkle_store import MerkleStore, MerkleStoreError
from flowaudit.sinks.witness_state import WitnessError, load_state, save_state

log = logging.getLogger(__name__)


@dataclass
class WitnessFiles:
    state: Path

    @property
    def key(self) -> Path:
        return self.state.with_name(self.state.name + ".key")

    @property
    def public_key(self) -> Path:
        return self.state.with_name(self.state.name + ".pub")


def load_signer(files: WitnessFiles, name: str, *, create: bool = True) -> CosignatureSigner:
    """The witness's Ed25519 key (`<state>.key`, made once), its vkey written to `<state>.pub`."""
    path = files.key
    if not path.exists():
        if not create:
            raise WitnessError(f"no witness key {path}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"name": name, "seed": secrets.token_hex(32)}, handle)
    try:
        data = json.loads(path.read_text())
        signer = CosignatureSigner(str(data["name"]), bytes.fromhex(data["seed"]))
    except (OSError, ValueError, KeyError, CheckpointError) as exc:
        raise WitnessError(f"witness key {path}: {exc}") from None
    files.public_key.write_text(signer.verifier().vkey + "\n")
    return signer


class StoreProofs:
    """Consistency proofs read from the Merkle tables (read access only)."""

    def __init__(self, merkle: MerkleStore) -> None:
        self.merkle = merkle

    def __call__(self, chain: str, old: int, new: int) -> Sequence[bytes]:
        try:
            return self.merkle.consistency_proof(chain, old, new)
        except MerkleStoreError as exc:
            raise ProofUnavailable(str(exc)) from None


class WorkerProofs:
    """Consistency proofs from the running worker's web API (it holds the embedded store)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def __call__(self, chain: str, old: int, new: int) -> Sequence[bytes]:
        from flowaudit.sinks.clickhouse import StoreError
        from flowaudit.webapi import fetch_json

        try:
            answer = fetch_json(
                f"{self.url}/flowaudit/merkle/consistency/",
                {"chain": chain, "old": old, "new": new},
                self.token,
            )
        except StoreError as exc:
            raise ProofUnavailable(str(exc)) from None
        return [base64.b64decode(item) for item in answer["proof"]]


def observe_all(
    witness: Witness, notes: Iterable[str], proofs: Any, now: int | None = None
) -> list[Observation]:
    """Judge each note in order; count and log each outcome (the caller keeps the state)."""
    seen = []
    for note in notes:
        moment = now if now is not None else int(time.time())
        observation = witness.observe(note, moment, proofs)
        metrics.WITNESS_CHECKPOINTS.labels(observation.outcome).inc()
        if observation.outcome in ALARMS:
            metrics.WITNESS_CONSISTENCY_FAILURES.labels(observation.chain or "unknown").inc()
            log.error("ALERT %s: %s", observation.outcome, observation.message)
        elif observation.outcome == COSIGNED and observation.chain is not None:
            tree = witness.trees[observation.chain]
            metrics.WITNESS_TREE_SIZE.labels(observation.chain).set(tree.size)
            metrics.WITNESS_ADVANCED.labels(observation.chain).set(tree.advanced_at)
            log.info("%s", observation.message)
        else:
            log.warning("%s: %s", observation.outcome, observation.message)
        seen.append(observation)
    return seen


def open_witness(state: Path, public_key: str | None, settings: Settings, name: str | None = None) -> Witness:
    """The witness of the log whose public key is given (or kept in the state), from its files."""
    from flowaudit.sinks.merkle_log import LogKeyError, read_public_key

    files = WitnessFiles(state)
    key_text = public_key
    if key_text is None and state.exists():
        try:
            key_text = json.loads(state.read_text())["log"]
        except (OSError, ValueError, KeyError) as exc:
            raise WitnessError(f"witness state {state}: {exc}") from None
    if key_text is None:
        default = settings.data_dir / "log.pub"
        key_text = str(default) if default.exists() else None
    if key_text is None:
        raise WitnessError(
            "the log's public key is needed: --public-key FILE|VKEY (the worker's <data dir>/log.pub)"
        )
    try:
        log_key: NoteVerifier = read_public_key(key_text)
    except LogKeyError as exc:
        raise WitnessError(str(exc)) from None
    trees, _ = load_state(state)
    signer = load_signer(files, name or f"witness.{log_key.name}")
    for chain, tree in trees.items():
        metrics.WITNESS_TREE_SIZE.labels(chain).set(tree.size)
        metrics.WITNESS_ADVANCED.labels(chain).set(tree.advanced_at)
    return Witness(log_key, signer, trees)


def proof_source(settings: Settings) -> Any:
    """Where consistency proofs come from: the reader role's URL, the running worker that holds the
    embedded store, or the store itself. Raises WitnessError."""
    from flowaudit.webapi import running_worker

    url = settings.clickhouse_reader_url or settings.resolved_clickhouse_url
    if url.startswith("chdb:"):
        worker = running_worker(settings)
        if worker is not None:
            return WorkerProofs(*worker)
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(dsn=url)
    except Exception as exc:
        raise WitnessError(f"cannot open the audit store for proofs: {exc}") from None
    return StoreProofs(MerkleStore(client))


def run_witness(settings: Settings, state: Path, public_key: str | None, idle_exit: float | None) -> int:
    """Read the checkpoints topic until SIGTERM/SIGINT (or `idle_exit` seconds without a checkpoint)."""
    try:
        witness = open_witness(state, public_key, settings)
        proofs = proof_source(settings)
    except WitnessError as exc:
        print(f"flowaudit witness: {exc}", file=sys.stderr)
        return 2
    bootstrap = _bootstrap(settings)
    if bootstrap is None:
        print("flowaudit witness: no broker (set FLOWAUDIT_KAFKA_URL, or run a worker)", file=sys.stderr)
        return 2
    stop = {"now": False}
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.update(now=True))
    log.info("witness of %s (key %s)", witness.log_key.name, witness.signer.verifier().vkey)
    before = _outcome_counts()
    try:
        _consume(settings, bootstrap, witness, proofs, state, idle_exit, stop)
    except WitnessError as exc:
        print(f"flowaudit witness: {exc}", file=sys.stderr)
        return 2
    counts = {o: n - before[o] for o, n in _outcome_counts().items() if n - before[o]}
    seen = ", ".join(f"{outcome} {count}" for outcome, count in counts.items()) or "none"
    chains = len(witness.trees)
    print(f"flowaudit witness: checkpoints read: {seen}; {chains} chains witnessed, state in {state}")
    return 0


def _outcome_counts() -> dict[str, float]:
    return {o: metrics.WITNESS_CHECKPOINTS.labels(o)._value.get() for o in metrics.WITNESS_OUTCOMES}


def _consume(
    settings: Settings,
    bootstrap: str,
    witness: Witness,
    proofs: Any,
    state: Path,
    idle_exit: float | None,
    stop: dict[str, bool],
) -> None:
    """Every partition of the checkpoints topic from the offsets kept in the state, in order."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from flowaudit.produce import KAFKA_API_VERSION

    topic = settings.topic_checkpoints
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, api_version=KAFKA_API_VERSION, enable_auto_commit=False
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=KAFKA_API_VERSION, acks="all")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            raise WitnessError(f"there is no topic {topic} on {bootstrap}")
        consumer.assign(partitions)
        _, offsets = load_state(state)
        for partition in partitions:
            consumer.seek(partition, offsets.get(partition.partition, 0))
        idle_since = time.monotonic()
        while not stop["now"]:
            records = [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
            if not records:
                if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    return
                continue
            idle_since = time.monotonic()
            for observation in observe_all(
                witness, [r.value.decode(errors="replace") for r in records], proofs
            ):
                if observation.cosigned:
                    key = (observation.chain or "").encode()
                    producer.send(settings.topic_witnessed, key=key, value=observation.cosigned.encode())
            producer.flush()
            for record in records:
                offsets[record.partition] = max(offsets.get(record.partition, 0), record.offset + 1)
            save_state(state, witness, offsets)
    finally:
        consumer.close()
        producer.close()


def _bootstrap(settings: Settings) -> str | None:
    if settings.kafka_url:
        return kafka_bootstrap(settings.kafka_url)
    from flowaudit.webapi import read_worker_file

    info = read_worker_file(settings)
    return str(info["kafka_bootstrap"]) if info and info.get("kafka_bootstrap") else None


def witness_vkey_of(state: Path) -> str:
    """The witness's public key (to give to receipt readers)."""
    try:
        return str(json.loads(state.read_text())["witness"])
    except (OSError, ValueError, KeyError) as exc:
        raise WitnessError(f"witness state {state}: {exc}") from None


def parse_witness_key(text: str) -> NoteVerifier:
    try:
        return parse_vkey(Path(text).read_text().strip() if Path(text).is_file() else text)
    except (OSError, CheckpointError) as exc:
        raise WitnessError(f"witness key {text}: {exc}") from None
