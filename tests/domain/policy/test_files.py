"""Reading one policy file: the YAML rules and the errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flowaudit.domain.policy import PolicyError, load_yaml
from flowaudit.domain.policy.files import CountriesFile, read_policy_file


def test_only_true_and_false_are_booleans() -> None:
    data = load_yaml("countries: [NO, no, ON, yes, Off]\nflags: [true, False, TRUE]\n")
    assert data == {"countries": ["NO", "no", "ON", "yes", "Off"], "flags": [True, False, True]}


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        load_yaml("a: 1\nb: 2\na: 3\n")


def test_a_file_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    path = tmp_path / "countries.yaml"
    path.write_text("- AT\n- CH\n")
    with pytest.raises(PolicyError) as caught:
        read_policy_file(path, CountriesFile)
    assert caught.value.file == str(path) and caught.value.message == "must be a YAML mapping"


def test_a_valid_file_comes_back_with_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "countries.yaml"
    path.write_text('kind: countries\nschema_version: 1\nversion: "t"\ncountries: [NO]\n')
    model, raw = read_policy_file(path, CountriesFile)
    assert model.countries == ["NO"] and raw == path.read_bytes()
