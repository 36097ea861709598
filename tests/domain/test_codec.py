"""The codec reads the writer schemas of the kinds of the table, and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.kinds import KIND_NAMES, KINDS
from flowaudit.schemas import HEADER_SCHEMA_DIR, SCHEMA_DIR


def _copy_kind_schemas(target: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, target / path.name)


def test_the_codec_knows_exactly_the_kinds() -> None:
    codec = AvroCodec(SCHEMA_DIR)
    assert codec.kinds == tuple(sorted(KIND_NAMES))
    assert {codec.reader(name).path.name.split(".")[0] for name in KIND_NAMES} == {
        kind.avro_schema for kind in KINDS.values()
    }


def test_a_schema_file_of_no_kind_is_not_a_writer_schema(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    shutil.copy(HEADER_SCHEMA_DIR / "decision.v1.avsc", tmp_path / "decision.v1.avsc")
    codec = AvroCodec(tmp_path)
    assert codec.kinds == tuple(sorted(KIND_NAMES))
    with pytest.raises(KeyError):
        codec.schema("decision", 1)


def test_a_kind_without_a_schema_file_fails_at_construction(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    for path in tmp_path.glob("sharing.*.avsc"):
        path.unlink()
    with pytest.raises(ValueError, match=r"no schema sharing\.vN\.avsc for sharing"):
        AvroCodec(tmp_path)


def test_a_misnamed_version_fails_at_construction(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    shutil.copy(SCHEMA_DIR / "sharing.v1.avsc", tmp_path / "sharing.latest.avsc")
    with pytest.raises(ValueError, match=r"schema files are named KIND\.vN\.avsc"):
        AvroCodec(tmp_path)
