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
    assert policy.direct_identifiers == frozenset(contract["direct_identifiers"])


def test_shipped_register_is_the_contract_table(policy: Policy, contract: dict[str, Any]) -> None:
    """Contract v2 §3, entry by entry: legal basis, Art. 9(2) condition, declared categories."""
    for purpose_id, (basis, condition, declares) in contract["register"].items():
        purpose = policy.purposes[purpose_id]
        assert purpose.legal_basis == basis, purpose_id
        assert purpose.special_category_condition == condition, purpose_id
        expected = set(policy.categories) if declares == "all" else set(declares)
        assert purpose.data_categories == expected, purpose_id
        assert purpose.source, purpose_id


def test_shipped_registry_is_the_contract_table(policy: Policy, contract: dict[str, Any]) -> None:
    """Contract v2 §4, entry by entry: storage, purposes, service area, encryption, mechanism, aliases."""
    eea = frozenset(contract["eea"])
    assert [s.name for s in policy.subcontractor_list] == list(contract["registry"])
    for name, entry in contract["registry"].items():
        sub = policy.find_subcontractor(name)
        assert sub is not None and sub.name == name
        assert sub.storage_countries == (
            eea if entry["storage"] == "Europe" else frozenset(entry["storage"])
        ), name
        if entry["purposes"] == "any":
            assert sub.serves_any and sub.controller, name
        else:
            assert sub.purposes == tuple(entry["purposes"]) and not sub.serves_any, name
        area = entry["area"]
        assert sub.service_area == (None if area is None else eea if area == "EEA" else frozenset(area)), name
        assert sub.encryption_required is entry["encrypted"], name
        assert sub.transfer_mechanism == entry["mechanism"], name
        for alias in entry.get("aliases", []):
            assert policy.find_subcontractor(alias.upper()) is sub, alias
        assert sub.source, name


def test_shipped_adequacy_registry_is_the_contract_list(policy: Policy, contract: dict[str, Any]) -> None:
    """Contract v2 §4: a decision applies from 00:00 UTC of its date; GB is in the zone to 2020-12-31."""
    from datetime import UTC, datetime, timedelta

    from flowaudit.domain.decision import Decider

    decider = Decider(policy)
    eras = policy.timeline.eras

    def era_at(moment: datetime) -> Any:
        return eras[decider.era_index(int(moment.timestamp() * 1000))]

    adequate_now = era_at(datetime(2026, 1, 1, tzinfo=UTC)).adequate
    assert adequate_now == frozenset(contract["adequacy"])
    for code, day in contract["adequacy"].items():
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        assert code in era_at(start).adequate, code
        assert code not in era_at(start - timedelta(milliseconds=1)).adequate, code
    for code, day in contract["zone_until"].items():
        end = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
        assert code in era_at(end - timedelta(milliseconds=1)).zones[policy.protected_zone], code
        assert code not in era_at(end).zones[policy.protected_zone], code


def test_register_entries_state_retention_and_source(policy: Policy) -> None:
    for purpose in policy.purposes.values():
        assert purpose.retention and purpose.data_categories
    assert policy.purposes["product_vigilance"].retention_period == "P15Y"
    assert policy.purposes["billing_retention"].retention_period == "P10Y"


def test_shipped_subcontractors_store_where_the_contract_says(
    policy: Policy, contract: dict[str, Any]
) -> None:
    assert {s.name for s in policy.subcontractor_list} == set(contract["subcontractors"])
    for name, (inside, outside) in contract["subcontractors"].items():
        registered = policy.find_subcontractor(name.upper())
        assert registered is not None
        assert inside in registered.storage_countries and outside not in registered.storage_countries


def test_protected_zone_is_the_eea_with_norway_as_a_string(policy: Policy, contract: dict[str, Any]) -> None:
    assert policy.protected_countries == frozenset(contract["eea"])
    assert "NO" in policy.protected_countries and len(policy.protected_countries) == 30


def test_all_contract_rules_flags_and_the_exception_are_enabled(
    policy: Policy, contract: dict[str, Any]
) -> None:
    assert sorted(rule.id for rule in policy.rules) == sorted(contract["rules"])
    assert sorted(flag.id for flag in policy.flags) == sorted(contract["flags"])
    assert [exc.id for exc in policy.exceptions] == contract["exceptions_enabled"]
    assert policy.disabled_exceptions == ()
    assert all(rule.source for rule in (*policy.rules, *policy.flags))


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
    assert [c.id for c in loaded.controllers] == ["alpine_ag"]
    assert loaded.controller_for("AT") is loaded.controllers[0] and loaded.controller_for("US") is None


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
    order = (
        "taxonomy",
        "register",
        "subcontractors",
        "zones",
        "countries",
        "rules",
        "exceptions",
        "adequacy",
        "controllers",  # added with the Art. 30 record: after the others, so their order stands
    )
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
        "adequacy.yaml",
        "register.yaml",
        "subcontractors.yaml",
        "rules.yaml",
        "exceptions.yaml",
        "controllers.yaml",
    ]


def test_every_file_is_schema_checked_before_any_is_compiled(tmp_path: Path) -> None:
    copy = tmp_path / "p"
    shutil.copytree(DEFAULT_POLICY_DIR, copy)
    countries = copy / "countries.yaml"  # compiled first: a reference-free error
    countries.write_text(countries.read_text().replace("countries: [AD,", "countries: [ad,", 1))
    rules = copy / "rules.yaml"  # compiled late, but its schema error is found when it is read
    rules.write_text(rules.read_text().replace("schema_version: 2", "schema_version: 1", 1))
    with pytest.raises(PolicyError) as caught:
        load_policy(copy)
    assert caught.value.file.endswith("rules.yaml") and caught.value.entry == "schema_version"


def test_shipped_controllers_split_the_flows_by_user_country(policy: Policy) -> None:
    """EEA residents are Withings SA's, US residents Withings Inc.'s; a Swiss or an unnamed subject
    is neither's (the ROPA shows such flows apart)."""
    assert [(c.id, c.name) for c in policy.controllers] == [
        ("withings_sa", "Withings SA"),
        ("withings_inc", "Withings, Inc."),
    ]
    sa, inc = policy.controllers
    assert sa.serves == policy.protected_countries and "NO" in sa.serves
    assert inc.serves == {"US"}
    assert policy.controller_for("DE") is sa and policy.controller_for("US") is inc
    assert policy.controller_for("CH") is None and policy.controller_for(None) is None
    assert sa.supervisory_authority is not None and "CNIL" in sa.supervisory_authority
    assert inc.dpo is None  # not stated in seed 001
    assert all(c.source for c in (*policy.subject_categories, *policy.recipient_categories))
    every_purpose = [s for s in policy.subject_categories if not s.purposes and not s.controllers]
    assert [s.id for s in every_purpose] == ["users", "general_public_incl_minors"]
    us_only = {s.id for s in policy.subject_categories if s.controllers == {"withings_inc"}}
    assert us_only == {"us_consumers", "california_residents", "ecg_activation_users", "patient_users"}
