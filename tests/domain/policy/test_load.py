from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.policy import POLICY_FILES, Policy, PolicyError, load_policy
from flowaudit.domain.policy.load import POLICY_TABLE
from flowaudit.policy import DEFAULT_POLICY_DIR
from tests.conftest import DATA_DIR, read_data

FAILING = read_data("policies/failing.yaml")


def test_shipped_policy_covers_the_contract_taxonomy(policy: Policy, contract: dict[str, Any]) -> None:
    for category, fields in contract["categories"].items():
        for field in fields:
            assert policy.field_categories.get(field) == category, field
    assert policy.unclassified_category == "unclassified"
    assert policy.unclassified_treated_as == "health"
    assert policy.special_categories == frozenset({"health"})


def test_shipped_register_has_the_contract_bases(policy: Policy, contract: dict[str, Any]) -> None:
    for purpose, basis in contract["register"].items():
        assert policy.purposes[purpose].legal_basis == basis, purpose


def test_register_entries_state_retention_and_source(policy: Policy) -> None:
    for purpose in policy.purposes.values():
        assert purpose.retention and purpose.data_categories
    assert policy.purposes["product_vigilance"].retention_period == "P15Y"
    assert policy.purposes["billing_retention"].retention_period == "P10Y"


def test_shipped_subcontractors_match_the_contract(policy: Policy, contract: dict[str, Any]) -> None:
    assert {s.name for s in policy.subcontractor_list} == set(contract["subcontractors"])
    for name, (inside, outside) in contract["subcontractors"].items():
        registered = policy.find_subcontractor(name.upper())
        assert registered is not None
        assert inside in registered.storage_countries and outside not in registered.storage_countries


def test_protected_zone_is_the_eea_with_norway_as_a_string(policy: Policy, contract: dict[str, Any]) -> None:
    assert policy.protected_countries == frozenset(contract["eea"])
    assert "NO" in policy.protected_countries and len(policy.protected_countries) == 30


def test_all_contract_rules_are_enabled_and_no_exception_is(policy: Policy, contract: dict[str, Any]) -> None:
    assert sorted(rule.id for rule in policy.rules) == sorted(contract["rules"])
    assert policy.exceptions == ()
    assert policy.disabled_exceptions  # shipped, documented, disabled


def test_version_is_a_content_hash(tmp_path: Path, policy: Policy) -> None:
    copy = tmp_path / "p"
    shutil.copytree(DEFAULT_POLICY_DIR, copy)
    assert load_policy(copy).version == policy.version
    register = copy / "register.yaml"
    register.write_text(register.read_text() + "\n# a comment changes the content\n")
    assert load_policy(copy).version != policy.version
    assert policy.version.startswith("sha256:")


def test_minimal_passing_fixture_loads() -> None:
    loaded = load_policy(DATA_DIR / "policies" / "minimal")
    assert loaded.protected_zone == "alps"
    assert [rule.id for rule in loaded.rules] == ["medical-leaves-alps", "consent-missing"]  # one disabled
    assert [exc.id for exc in loaded.exceptions] == ["lab-in-us"]
    assert "NO" in loaded.countries


def test_missing_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope")
    copy = tmp_path / "p"
    shutil.copytree(DEFAULT_POLICY_DIR, copy)
    (copy / "rules.yaml").unlink()
    with pytest.raises(PolicyError, match=r"rules\.yaml: cannot read policy file"):
        load_policy(copy)


@pytest.mark.parametrize("fixture", FAILING, ids=[f["name"] for f in FAILING])
def test_failing_fixtures_name_file_and_entry(tmp_path: Path, fixture: dict[str, Any]) -> None:
    copy = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_DIR, copy)
    target = copy / fixture["file"]
    text = target.read_text()
    assert fixture["find"] in text, f"fixture {fixture['name']!r} no longer matches {fixture['file']}"
    target.write_text(text.replace(fixture["find"], fixture["replace"], 1))
    with pytest.raises(PolicyError) as caught:
        load_policy(copy)
    error = caught.value
    assert error.file.endswith(fixture["file"])
    assert error.entry == fixture["entry"]
    assert fixture["file"] in str(error)
    if "message" in fixture:
        assert fixture["message"] in str(error)


def test_policy_files_constant_lists_every_shipped_file() -> None:
    assert sorted(POLICY_FILES) == sorted(p.name for p in Path(DEFAULT_POLICY_DIR).glob("*.yaml"))


def test_version_hashes_the_files_in_their_historical_order(policy: Policy) -> None:
    # Written out here on purpose: reordering the loader's file table would change every version.
    order = ("taxonomy", "register", "subcontractors", "zones", "countries", "rules", "exceptions")
    digest = hashlib.sha256()
    for name in (f"{stem}.yaml" for stem in order):
        digest.update(
            name.encode() + b"\0" + hashlib.sha256((DEFAULT_POLICY_DIR / name).read_bytes()).digest()
        )
    assert policy.version == "sha256:" + digest.hexdigest()[:16]
    assert list(policy.file_versions) == [f"{stem}.yaml" for stem in order]


def test_the_file_table_compiles_each_file_once_in_dependency_order() -> None:
    stages = sorted(POLICY_TABLE, key=lambda spec: spec.stage)
    assert [spec.stage for spec in stages] == list(range(1, len(POLICY_TABLE) + 1))
    assert [spec.name for spec in stages] == [
        "countries.yaml",
        "taxonomy.yaml",
        "zones.yaml",
        "register.yaml",
        "subcontractors.yaml",
        "rules.yaml",
        "exceptions.yaml",
    ]


def test_every_file_is_schema_checked_before_any_is_compiled(tmp_path: Path) -> None:
    copy = tmp_path / "p"
    shutil.copytree(DEFAULT_POLICY_DIR, copy)
    countries = copy / "countries.yaml"  # compiled first: a reference-free error
    countries.write_text(countries.read_text().replace("countries: [AD,", "countries: [ad,", 1))
    rules = copy / "rules.yaml"  # compiled late, but its schema error is found when it is read
    rules.write_text(rules.read_text().replace("schema_version: 1", "schema_version: 2", 1))
    with pytest.raises(PolicyError) as caught:
        load_policy(copy)
    assert caught.value.file.endswith("rules.yaml") and caught.value.entry == "schema_version"
