"""Signed checkpoints of a chain's Merkle log: C2SP tlog-checkpoint bodies in C2SP signed notes.

A checkpoint (https://c2sp.org/tlog-checkpoint) states the size and root hash of a log's tree:

    <origin>\\n<tree size>\\n<base64 root hash>\\n[extension lines]

A signed note (https://c2sp.org/signed-note) is that text, a blank line, then one line per
signature: `— <key name> base64(key ID || signature)`, the key ID being the first 4 bytes
(big-endian) of SHA-256(key name || 0x0A || signature type || public key). Ed25519 (type 0x01)
signs the note text itself. The byte layout is that of golang.org/x/mod/sumdb/note, checked in the
tests against its published vector. Verifier keys are written `<name>+<key ID, 8 hex>+base64(type ||
public key)` (vkeys), signer keys `PRIVATE+KEY+<name>+<key ID>+base64(type || 32-byte seed)`.

flowaudit's choices (docs/merkle.md says why):
- one log per chain: the origin is `<log name>/<chain id>` (a chain id is `<topic>/<partition>`, and
  Kafka topic names hold no space or `+`), and the key name is the origin, as tlog-checkpoint
  recommends; one Ed25519 key signs every chain, so a chain's vkey is derived from the public key
  and the origin (`NoteVerifier(origin, public_key)`).
- the time goes in one extension line, `time <RFC 3339 UTC, milliseconds>`, covered by the log's
  signature. Extension lines are opaque to witnesses: the time is the log's own claim.
- a witness cosigns with a timestamped Ed25519 cosignature (https://c2sp.org/tlog-cosignature,
  type 0x04): Ed25519 over `cosignature/v1\\ntime <POSIX seconds>\\n` + the checkpoint body, the
  signature being the 8-byte big-endian timestamp then the 64 signature bytes.

Pure: no files, no settings. Every failure is a CheckpointError with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100  # signed-note: verifiers must accept at least 16 (Go's note package: 100)
TIME_EXTENSION = "time "
_HASH_SIZE = 32


class CheckpointError(ValueError):
    """A key, note or checkpoint that is malformed, or a signature that does not verify."""


def key_id(name: str, signature_type: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || type || public key)[:4], big-endian (signed-note)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or not name.isprintable():
        raise CheckpointError(f"bad key name {name!r}: it must be non-empty, without spaces or '+'")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not base64: {text[:40]!r}") from None


class NoteVerifier:
    """Checks one key's signatures: an Ed25519 public key under a key name (type 0x01)."""

    signature_type = ED25519

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise CheckpointError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, self.signature_type, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @property
    def vkey(self) -> str:
        material = base64.b64encode(bytes([self.signature_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{material}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


def parse_vkey(vkey: str) -> NoteVerifier:
    """A verifier from its vkey string (Ed25519 or cosignature/v1). Raises CheckpointError."""
    parts = vkey.strip().split("+", 2)  # base64 has "+" too
    if len(parts) != 3:
        raise CheckpointError(f"a verifier key is <name>+<key id>+<key>, not {vkey[:60]!r}")
    name, hex_id, material = parts
    key = _b64decode(material, "the verifier key")
    kinds: dict[int, type[NoteVerifier]] = {ED25519: NoteVerifier, COSIGNATURE_V1: CosignatureVerifier}
    if not key or key[0] not in kinds:
        raise CheckpointError(f"verifier key {name}: unknown signature type (not Ed25519 or cosignature/v1)")
    verifier = kinds[key[0]](name, key[1:])
    if f"{verifier.key_id:08x}" != hex_id:
        raise CheckpointError(f"verifier key {name}: key id {hex_id} does not match its key")
    return verifier


class NoteSigner:
    """Signs notes with an Ed25519 private key under a key name."""

    signature_type = ED25519

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            raise CheckpointError(f"an Ed25519 private key (seed) is 32 bytes, not {len(seed)}")
        self.name = name
        self._seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(name, self.signature_type, self.public_key)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def skey(self) -> str:
        """The signer key string (a secret: write it where only the signer reads it)."""
        material = base64.b64encode(bytes([self.signature_type]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{material}"

    def verifier(self, name: str | None = None) -> NoteVerifier:
        """The matching verifier (under another key name: the same key for another origin)."""
        return NoteVerifier(name or self.name, self.public_key)

    def for_name(self, name: str) -> NoteSigner:
        """The same key under another key name (each chain's origin)."""
        return NoteSigner(name, self._seed)

    def sign(self, text: bytes) -> bytes:
        return self._key.sign(text)

    def note_signature(self, text: bytes) -> NoteSignature:
        return NoteSignature(self.name, self.key_id, self.sign(text))

    def __repr__(self) -> str:  # never the key
        return f"NoteSigner({self.name!r}, key id {self.key_id:08x})"


def parse_skey(skey: str) -> NoteSigner:
    """A signer from its `PRIVATE+KEY+...` string (Ed25519 only). Raises CheckpointError."""
    parts = skey.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise CheckpointError("a signer key is PRIVATE+KEY+<name>+<key id>+<key>")
    _, _, name, hex_id, material = parts
    key = _b64decode(material, "the signer key")
    if not key or key[0] != ED25519:
        raise CheckpointError(f"signer key {name}: not an Ed25519 key")
    signer = NoteSigner(name, key[1:])
    if f"{signer.key_id:08x}" != hex_id:
        raise CheckpointError(f"signer key {name}: key id {hex_id} does not match its key")
    return signer


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: int
    signature: bytes  # without the key id

    @property
    def line(self) -> str:
        blob = base64.b64encode(struct.pack(">I", self.key_id) + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n") or text.startswith("\n"):
        raise CheckpointError("a note's text is non-empty lines ending in a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("a note holds no control characters but newlines")


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """The signed note: `text` (ending in a newline), a blank line, one signature line per signer."""
    _check_text(text)
    if not signers:
        raise CheckpointError("a signed note needs at least one signer")
    return text + "\n" + "".join(signer.note_signature(text.encode()).line for signer in signers)


def add_signature(note: str, signature: NoteSignature) -> str:
    """The note with one more signature line (a witness's cosignature, say); existing lines stay."""
    text, signatures = split_note(note)
    if len(signatures) >= MAX_SIGNATURES:
        raise CheckpointError(f"a signed note has at most {MAX_SIGNATURES} signatures")
    return text + "\n" + "".join(s.line for s in signatures) + signature.line


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """The text and the signatures of a signed note, unverified. Raises CheckpointError."""
    if not note.endswith("\n"):
        raise CheckpointError("a signed note ends in a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise CheckpointError("a signed note has a blank line between its text and its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    _check_text(text)
    lines = block.splitlines(keepends=True)
    if not lines or len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"a signed note has 1 to {MAX_SIGNATURES} signature lines, not {len(lines)}")
    return text, [_parse_signature_line(line) for line in lines]


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX) or not line.endswith("\n"):
        raise CheckpointError(f"not a signature line: {line[:60]!r}")
    name, _, blob = line[len(SIGNATURE_PREFIX) : -1].partition(" ")
    _check_name(name)
    raw = _b64decode(blob, f"the signature of {name}")
    if len(raw) < 5:
        raise CheckpointError(f"the signature of {name} is too short")
    return NoteSignature(name, struct.unpack(">I", raw[:4])[0], raw[4:])


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """The note's text and the known keys whose signatures verified.

    Signed-note rules: signatures from unknown keys (name and key ID) are ignored; a known key's
    signature that fails rejects the note; a note no known key signed is rejected. Raises
    CheckpointError."""
    text, signatures = split_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteVerifier] = []
    for signature in signatures:
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(text.encode(), signature.signature):
            raise CheckpointError(f"invalid signature for key {signature.name}+{signature.key_id:08x}")
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        raise CheckpointError("the note has no signature from a known key")
    return text, verified


# --- checkpoints ----------------------------------------------------------------------------------


def origin_for(log_name: str, chain_id: str) -> str:
    """The origin (and key name) of a chain's log."""
    origin = f"{log_name}/{chain_id}"
    _check_name(origin)
    return origin


_TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def format_time(epoch_ms: int) -> str:
    """RFC 3339, UTC, milliseconds: 2025-11-05T10:00:00.123Z."""
    seconds, millis = divmod(epoch_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def parse_time(text: str) -> int:
    """Epoch milliseconds of a `format_time` string. Raises CheckpointError."""
    try:
        if not _TIME_FORMAT.fullmatch(text):
            raise ValueError
        moment = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise CheckpointError(f"bad checkpoint time {text!r} (want 2025-11-05T10:00:00.000Z)") from None
    return int(moment.timestamp()) * 1000 + int(text[20:23])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A chain's tree head: origin, size, root, and when the log signed it (epoch ms)."""

    origin: str
    size: int
    root: bytes
    time_ms: int | None = None
    extensions: tuple[str, ...] = ()  # other extension lines, kept as read

    def body(self) -> str:
        if self.size < 0 or len(self.root) != _HASH_SIZE:
            raise CheckpointError(f"a checkpoint has a size >= 0 and a {_HASH_SIZE}-byte root")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        if self.time_ms is not None:
            lines.append(TIME_EXTENSION + format_time(self.time_ms))
        lines += self.extensions
        return "".join(line + "\n" for line in lines)

    def sign(self, signer: NoteSigner) -> str:
        """The signed note of this checkpoint; the signer's key name must be the origin."""
        if signer.name != self.origin:
            raise CheckpointError(f"key {signer.name} signs for its own origin, not {self.origin}")
        return sign_note(self.body(), [signer])


def parse_checkpoint(text: str) -> Checkpoint:
    """A checkpoint from a note's text. Raises CheckpointError."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
        raise CheckpointError("a checkpoint is at least three non-empty lines, each ending in a newline")
    origin, size_line, root_line, *extensions = lines[:-1]
    if not size_line.isdigit() or (size_line.startswith("0") and size_line != "0"):
        raise CheckpointError(f"bad tree size {size_line!r}")
    root = _b64decode(root_line, "the root hash")
    if len(root) != _HASH_SIZE:
        raise CheckpointError(f"the root hash is {len(root)} bytes, not {_HASH_SIZE}")
    time_ms = None
    if extensions and extensions[0].startswith(TIME_EXTENSION):
        time_ms = parse_time(extensions[0][len(TIME_EXTENSION) :])
        extensions = extensions[1:]
    return Checkpoint(origin, int(size_line), root, time_ms, tuple(extensions))


def open_checkpoint(note: str, verifier: NoteVerifier, witnesses: Iterable[NoteVerifier] = ()) -> Checkpoint:
    """The checkpoint of a signed note, once the log's own signature verified (the verifier's key
    name must be the origin); witnesses' cosignatures, if known, must verify too. Raises CheckpointError."""
    text, verified = open_note(note, [verifier, *witnesses])
    checkpoint = parse_checkpoint(text)
    if verifier not in verified:
        raise CheckpointError(f"the checkpoint is not signed by the log's key {verifier.name}")
    if checkpoint.origin != verifier.name:
        raise CheckpointError(f"the checkpoint's origin {checkpoint.origin} is not the key's {verifier.name}")
    return checkpoint


# --- witness cosignatures (c2sp.org/tlog-cosignature, Ed25519, timestamped) -----------------------


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime %d\n" % timestamp + body


class CosignatureVerifier(NoteVerifier):
    """A witness's public key: checks `timestamp(8) || Ed25519 signature` over the cosigned message."""

    signature_type = COSIGNATURE_V1

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != 8 + 64:
            return False
        timestamp = struct.unpack(">Q", signature[:8])[0]
        if timestamp >= 1 << 63:
            return False
        return super().verify(cosigned_message(text, timestamp), signature[8:])


class CosignatureSigner:
    """A witness's private key: cosigns a checkpoint body as of a POSIX time (seconds)."""

    def __init__(self, name: str, seed: bytes) -> None:
        self._signer = NoteSigner(name, seed)
        self.name = name
        self.public_key = self._signer.public_key
        self.key_id = key_id(name, COSIGNATURE_V1, self.public_key)

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)

    def note_signature(self, body: bytes, timestamp: int) -> NoteSignature:
        if not 0 <= timestamp < 1 << 63:
            raise CheckpointError(f"a cosignature's timestamp is 0 to 2**63 - 1, not {timestamp}")
        signature = self._signer.sign(cosigned_message(body, timestamp))
        return NoteSignature(self.name, self.key_id, struct.pack(">Q", timestamp) + signature)


def cosign(note: str, witness: CosignatureSigner, timestamp: int) -> str:
    """The note with the witness's cosignature as of `timestamp` (POSIX seconds) added. The witness
    must have checked that the checkpoint is consistent with what it saw before (not done here)."""
    text, _ = split_note(note)
    return add_signature(note, witness.note_signature(text.encode(), timestamp))


def cosignature_time(note: str, witness: CosignatureVerifier) -> int:
    """The POSIX time of the witness's verified cosignature on the note. Raises CheckpointError."""
    text, signatures = split_note(note)
    for signature in signatures:
        if (signature.name, signature.key_id) == (witness.name, witness.key_id):
            if not witness.verify(text.encode(), signature.signature):
                raise CheckpointError(f"invalid cosignature by {witness.name}")
            return int(struct.unpack(">Q", signature.signature[:8])[0])
    raise CheckpointError(f"the note has no cosignature by {witness.name}")
