"""Signed notes and checkpoints (`domain.checkpoint`) against the vectors of real implementations
(tests/data/merkle/signed_note_vectors.yaml: Go's note package, the Go checksum database, the
transparency-dev cosignature code), and flowaudit's own checkpoints: sign, open, tamper, cosign."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import pytest

from flowaudit.domain.checkpoint import (
    Checkpoint,
    CheckpointError,
    CosignatureSigner,
    CosignatureVerifier,
    NoteSigner,
    NoteVerifier,
    cosign,
    cosignature_time,
    key_id,
    open_checkpoint,
    open_note,
    origin_for,
    parse_checkpoint,
    parse_skey,
    parse_time,
    parse_vkey,
    sign_note,
    split_note,
)
from flowaudit.domain.merkle import leaf_hashes, root_of
from tests.conftest import read_data

VECTORS: dict[str, Any] = read_data("merkle/signed_note_vectors.yaml")
GO = VECTORS["go_note"]


def test_signing_reproduces_the_go_note_byte_for_byte() -> None:
    signer = parse_skey(GO["skey"])
    assert signer.verifier().vkey == GO["vkey"]
    assert f"{signer.key_id:08x}" == "c74f20a3"
    assert signer.key_id == key_id("PeterNeumann", 0x01, parse_vkey(GO["vkey"]).public_key)
    assert sign_note(GO["text"], [signer]) == GO["note"]
    assert signer.skey == GO["skey"]
    assert "AYEK" not in repr(signer)  # the private key is never shown


def test_the_go_note_opens_and_unknown_signatures_are_ignored() -> None:
    peter, enoch = parse_vkey(GO["vkey"]), parse_vkey(GO["other_vkey"])
    both = GO["note"] + GO["other_signature"]
    text, verified = open_note(both, [peter])
    assert text == GO["text"] and verified == [peter]
    assert open_note(both, [peter, enoch])[1] == [peter, enoch]
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        open_note(both, [])
    with pytest.raises(CheckpointError, match="invalid signature for key PeterNeumann"):
        open_note(GO["note"].replace("cryptography", "cryptographY"), [peter])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda note: note[:-1],  # no final newline
        lambda note: note.replace("\n\n", "\n"),  # no blank line
        lambda note: "\x01" + note,  # a control character
        lambda note: note + "Unexpected line.\n",
        lambda note: note.replace("\u2014 PeterNeumann", "\u2014 Peter Neumann"),  # a space in the name
        lambda note: note.replace("x08go", "x08g!"),  # not base64
    ],
)
def test_malformed_notes_are_refused(mangle: Any) -> None:
    with pytest.raises(CheckpointError):
        open_note(mangle(GO["note"]), [parse_vkey(GO["vkey"])])


def test_a_real_checkpoint_of_the_go_checksum_database_verifies() -> None:
    case = VECTORS["sumdb_checkpoint"]
    text, _ = open_note(case["note"], [parse_vkey(case["vkey"])])
    checkpoint = parse_checkpoint(text)
    assert (checkpoint.origin, checkpoint.size) == (case["origin"], case["size"])
    assert checkpoint.root == base64.b64decode(case["root"]) and checkpoint.time_ms is None
    assert checkpoint.body() == text  # the layout round-trips
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_note(case["note"].replace("30055305", "30055306"), [parse_vkey(case["vkey"])])


def test_the_cosignature_vectors_key_id_and_timestamp() -> None:
    case = VECTORS["cosignature"]
    witness = parse_vkey(case["vkey"])
    assert isinstance(witness, CosignatureVerifier) and witness.vkey == case["vkey"]
    raw = base64.b64decode(case["signature"])
    assert len(raw) == 4 + 8 + 64 and struct.unpack(">Q", raw[4:12])[0] == case["timestamp"]


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # key id does not match
        "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown type
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # short key
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(CheckpointError):
        parse_vkey(vkey)


def _signer(origin: str) -> NoteSigner:
    return NoteSigner(origin, hashlib.sha256(b"flowaudit test log key").digest())


def test_a_chain_checkpoint_signs_opens_and_carries_its_time() -> None:
    origin = origin_for("audit.flowaudit.example", "flowaudit.device-sync/3")
    assert origin == "audit.flowaudit.example/flowaudit.device-sync/3"
    root = root_of(leaf_hashes([b"a", b"b", b"c"]))
    checkpoint = Checkpoint(origin, 3, root, time_ms=1_762_336_800_123)
    note = checkpoint.sign(_signer(origin))
    body = f"{origin}\n3\n{base64.b64encode(root).decode()}\ntime 2025-11-05T10:00:00.123Z\n"
    assert note.startswith(body + "\n\u2014 " + origin + " ")
    verifier = _signer(origin).verifier()
    assert open_checkpoint(note, verifier) == checkpoint
    # one key signs every chain: another chain's vkey is the same public key under its origin
    other = _signer("unused").for_name(origin_for("audit.flowaudit.example", "flowaudit.sharing/0"))
    assert other.public_key == verifier.public_key and other.key_id != verifier.key_id
    with pytest.raises(CheckpointError, match="signs for its own origin"):
        checkpoint.sign(other)
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        open_checkpoint(note, other.verifier())


@pytest.mark.parametrize(
    ("old", "new"),
    [("\n3\n", "\n4\n"), ("time 2025-11-05T10:00:00.123Z", "time 2025-11-05T10:00:00.124Z")],
)
def test_a_changed_size_or_time_fails_the_signature(old: str, new: str) -> None:
    origin = "log.example/t/0"
    note = Checkpoint(origin, 3, bytes(32), time_ms=1_762_336_800_123).sign(_signer(origin))
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(note.replace(old, new), _signer(origin).verifier())


@pytest.mark.parametrize(
    "text",
    [
        "log\n03\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",  # leading zero
        "log\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "log\n3\nAAAA\n",  # not 32 bytes
        "log\n3\n",
        "log\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\ntime yesterday\n",
        "log\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n",  # an empty extension line
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(text)


def test_times_round_trip_in_milliseconds() -> None:
    for epoch_ms in (0, 999, 1_762_336_800_123, 4_102_444_799_999):
        checkpoint = Checkpoint("log", 0, bytes(32), time_ms=epoch_ms, extensions=("other line",))
        assert parse_checkpoint(checkpoint.body()) == checkpoint
    assert parse_time("1970-01-01T00:00:01.001Z") == 1001


def test_a_witness_cosignature_is_added_verified_and_timestamped() -> None:
    origin = "log.example/t/0"
    note = Checkpoint(origin, 5, bytes(range(32)), time_ms=1_000).sign(_signer(origin))
    witness = CosignatureSigner("witness.example/w1", hashlib.sha256(b"witness").digest())
    cosigned = cosign(note, witness, timestamp=1_727_964_367)
    text, signatures = split_note(cosigned)
    assert [s.name for s in signatures] == [origin, "witness.example/w1"]
    assert len(signatures[1].signature) == 8 + 64
    assert cosignature_time(cosigned, witness.verifier()) == 1_727_964_367
    log_key, witness_key = _signer(origin).verifier(), witness.verifier()
    assert open_checkpoint(cosigned, log_key, [witness_key]).size == 5
    assert parse_vkey(witness_key.vkey).key_id == witness_key.key_id  # type 0x04 in its vkey
    # the witness's signature covers the timestamp: another time does not verify
    forged = signatures[1].signature[:7] + b"\x00" + signatures[1].signature[8:]
    bad = cosigned.replace(
        base64.b64encode(struct.pack(">I", witness.key_id) + signatures[1].signature).decode(),
        base64.b64encode(struct.pack(">I", witness.key_id) + forged).decode(),
    )
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(bad, log_key, [witness_key])
    # the same key as a plain Ed25519 verifier has another key id: the cosignature is not its
    assert NoteVerifier(witness.name, witness.public_key).key_id != witness.key_id
    assert text.endswith("time 1970-01-01T00:00:01.000Z\n")
