"""Loading a policy directory: read its files, check them against each other, compile a `Policy`.

`load_policy(directory)` reads and schema-checks every file of the table `POLICY_TABLE` (in table
order, so the first broken file is the one reported), then compiles them one at a time in `stage`
order: each file's compiler checks its entries against what the lower stages produced (a zone's
countries against countries.yaml, a rule's categories against the taxonomy, ...) and adds its own
lookup tables to the draft. Any problem raises `PolicyError` naming the file and the entry at fault,
so a bad deploy fails at start-up rather than deciding with a half-read policy.

The policy version is a content hash over the files, so every decision can say which policy made it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

from flowaudit.domain.policy.checks import CHECKS
from flowaudit.domain.policy.files import (
    CountriesFile,
    ExceptionScope,
    ExceptionsFile,
    M,
    RegisterFile,
    RuleDef,
    RulesFile,
    StorageDef,
    SubcontractorsFile,
    TaxonomyFile,
    ZonesFile,
    read_policy_file,
)
from flowaudit.domain.policy.model import (
    Category,
    Policy,
    PolicyError,
    PolicyException,
    Purpose,
    Rule,
    Subcontractor,
)

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_RULE_ID = re.compile(r"^[a-z][a-z0-9-]*$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")

# `fail(entry, message)`: the PolicyError for an entry of the file being compiled.
Fail = Callable[[str, str], PolicyError]


@dataclass
class _Draft:
    """What the compilers have produced so far. Each compiler fills in its own fields and reads only
    those of lower stages; the defaults are what a later stage would see if the order were wrong."""

    countries: frozenset[str] = frozenset()
    categories: dict[str, Category] = field(default_factory=dict)
    field_categories: dict[str, str] = field(default_factory=dict)
    unclassified_category: str = ""
    unclassified_treated_as: str = ""
    special_categories: frozenset[str] = frozenset()
    zones: dict[str, frozenset[str]] = field(default_factory=dict)
    protected_zone: str = ""
    purposes: dict[str, Purpose] = field(default_factory=dict)
    subcontractors: dict[str, Subcontractor] = field(default_factory=dict)  # lower-cased names, aliases
    subcontractor_list: list[Subcontractor] = field(default_factory=list)
    rule_ids: set[str] = field(default_factory=set)  # disabled rules too: an exception may waive one
    rules: list[Rule] = field(default_factory=list)  # enabled ones
    exceptions: list[PolicyException] = field(default_factory=list)  # enabled ones
    disabled_exceptions: list[str] = field(default_factory=list)


# --- the compilers, in stage order --------------------------------------------------------------------


def _compile_countries(doc: CountriesFile, draft: _Draft, fail: Fail) -> None:
    seen: set[str] = set()
    for index, code in enumerate(doc.countries):
        if not _COUNTRY.match(code):
            raise fail(f"countries[{index}]", f"not an upper-case alpha-2 code: {code!r}")
        if code in seen:
            raise fail(f"countries[{index}]", f"duplicate country {code!r}")
        seen.add(code)
    draft.countries = frozenset(seen)


def _compile_taxonomy(doc: TaxonomyFile, draft: _Draft, fail: Fail) -> None:
    for name in doc.categories:
        if not _IDENTIFIER.match(name):
            raise fail(f"categories.{name}", "category ids are lower_snake_case")
    unclassified = doc.unclassified
    if unclassified.category in doc.categories:
        raise fail("unclassified.category", "must not be one of the declared categories")
    if unclassified.treated_as not in doc.categories:
        raise fail("unclassified.treated_as", f"unknown category {unclassified.treated_as!r}")
    draft.field_categories = _field_categories(doc, fail)
    draft.categories = {
        name: Category(description=cat.description, special_category=cat.special_category)
        for name, cat in doc.categories.items()
    }
    draft.unclassified_category = unclassified.category
    draft.unclassified_treated_as = unclassified.treated_as
    draft.special_categories = frozenset(name for name, cat in doc.categories.items() if cat.special_category)


def _field_categories(doc: TaxonomyFile, fail: Fail) -> dict[str, str]:
    """field -> its category; a field listed twice is an error, as the decision needs one answer."""
    field_categories: dict[str, str] = {}
    for category, field_names in doc.fields.items():
        if category not in doc.categories:
            raise fail(f"fields.{category}", "fields listed under an undeclared category")
        for name in field_names:
            entry = f"fields.{category}.{name}"
            if not _IDENTIFIER.match(name):
                raise fail(entry, "field names are lower_snake_case")
            if name in field_categories:
                raise fail(
                    entry,
                    f"field already mapped to category {field_categories[name]!r}; "
                    "every field maps to exactly one category",
                )
            field_categories[name] = category
    return field_categories


def _compile_zones(doc: ZonesFile, draft: _Draft, fail: Fail) -> None:
    for zone_id, zone in doc.zones.items():
        for code in zone.countries:
            if code not in draft.countries:
                raise fail(f"zones.{zone_id}.countries", f"unknown country code {code!r}")
        draft.zones[zone_id] = frozenset(zone.countries)
    if doc.protected_zone not in draft.zones:
        raise fail("protected_zone", f"unknown zone {doc.protected_zone!r}")
    draft.protected_zone = doc.protected_zone


def _compile_register(doc: RegisterFile, draft: _Draft, fail: Fail) -> None:
    for purpose_id, purpose in doc.purposes.items():
        if not _IDENTIFIER.match(purpose_id):
            raise fail(f"purposes.{purpose_id}", "purpose ids are lower_snake_case")
        for category in purpose.data_categories:
            if category not in draft.categories:
                raise fail(f"purposes.{purpose_id}.data_categories", f"unknown category {category!r}")
        draft.purposes[purpose_id] = Purpose(
            id=purpose_id,
            legal_basis=purpose.legal_basis.value,
            description=purpose.description,
            data_categories=frozenset(purpose.data_categories),
            retention=purpose.retention,
            retention_period=purpose.retention_period,
        )


def _compile_subcontractors(doc: SubcontractorsFile, draft: _Draft, fail: Fail) -> None:
    for index, sub in enumerate(doc.subcontractors):
        entry = f"subcontractors[{index}]({sub.name})"
        storage_countries, label = _storage(sub.storage, f"{entry}.storage", draft, fail)
        for purpose_id in sub.purposes:
            if purpose_id not in draft.purposes:
                raise fail(f"{entry}.purposes", f"unknown purpose {purpose_id!r}")
        compiled = Subcontractor(
            name=sub.name,
            storage_countries=storage_countries,
            storage_label=label,
            service=sub.service,
            task=sub.task,
            purposes=tuple(sub.purposes),
        )
        draft.subcontractor_list.append(compiled)
        # Events name processors loosely (case, aliases); all spellings must lead to one entry.
        for key in (sub.name, *sub.aliases):
            folded = key.strip().lower()
            if folded in draft.subcontractors:
                raise fail(entry, f"name or alias {key!r} is already registered")
            draft.subcontractors[folded] = compiled


def _storage(storage: StorageDef, entry: str, draft: _Draft, fail: Fail) -> tuple[frozenset[str], str]:
    """Where a subcontractor stores data (a zone, or a list of countries), and how that is shown."""
    zone, countries = storage.zone, storage.countries
    if zone is not None and countries is None:
        if zone not in draft.zones:
            raise fail(f"{entry}.zone", f"unknown zone {zone!r}")
        return draft.zones[zone], zone.upper()
    if countries is not None and zone is None:
        for code in countries:
            if code not in draft.countries:
                raise fail(f"{entry}.countries", f"unknown country code {code!r}")
        return frozenset(countries), ",".join(countries)
    raise fail(entry, "give exactly one of `countries` or `zone`")


def _compile_rules(doc: RulesFile, draft: _Draft, fail: Fail) -> None:
    for index, rule in enumerate(doc.rules):
        entry = f"rules[{index}]({rule.id})"
        if not _RULE_ID.match(rule.id):
            raise fail(entry, "rule ids are lower-kebab-case")
        if rule.id in draft.rule_ids:
            raise fail(entry, f"duplicate rule id {rule.id!r}")
        draft.rule_ids.add(rule.id)
        zone_countries = _check_rule_params(rule, f"{entry}.params", draft, fail)
        if not rule.enabled:
            continue
        params = rule.params
        draft.rules.append(
            Rule(
                id=rule.id,
                check=rule.check,
                description=rule.description,
                severity=rule.severity,
                categories=frozenset(params.categories),
                purposes=frozenset(params.purposes),
                legal_bases=frozenset(basis.value for basis in params.legal_bases),
                event_types=frozenset(params.event_types),
                zone_countries=zone_countries,
            )
        )


def _check_rule_params(rule: RuleDef, entry: str, draft: _Draft, fail: Fail) -> frozenset[str]:
    """Check a rule's params against the earlier files and against what its check needs; returns the
    countries of the rule's zone (default: the protected zone)."""
    params = rule.params
    for category in params.categories:
        if category not in draft.categories:
            raise fail(f"{entry}.categories", f"unknown category {category!r}")
    for purpose_id in params.purposes:
        if purpose_id not in draft.purposes:
            raise fail(f"{entry}.purposes", f"unknown purpose {purpose_id!r}")
    zone_id = params.zone or draft.protected_zone
    if zone_id not in draft.zones:
        raise fail(f"{entry}.zone", f"unknown zone {zone_id!r}")
    _check_needs(rule, entry, fail)
    return draft.zones[zone_id]


def _check_needs(rule: RuleDef, entry: str, fail: Fail) -> None:
    """The params the rule's check needs (the registry's `needs`) must be given, and non-empty."""
    for group in CHECKS[rule.check].needs:  # `check` is a registered name: the schema says so
        if any(getattr(rule.params, name) for name in group):
            continue
        # The two wordings are the ones the loader has always used (a single param, alternatives).
        if len(group) == 1:
            raise fail(f"{entry}.{group[0]}", f"check {rule.check!r} needs {group[0]}")
        raise fail(entry, f"{rule.check} needs {' or '.join(group)}")


def _compile_exceptions(doc: ExceptionsFile, draft: _Draft, fail: Fail) -> None:
    seen: set[str] = set()
    for index, exc_def in enumerate(doc.exceptions):
        entry = f"exceptions[{index}]({exc_def.id})"
        if exc_def.id in seen:
            raise fail(entry, f"duplicate exception id {exc_def.id!r}")
        seen.add(exc_def.id)
        if exc_def.waives not in draft.rule_ids:
            raise fail(f"{entry}.waives", f"unknown rule {exc_def.waives!r}")
        scope = exc_def.scope
        _check_scope(scope, f"{entry}.scope", draft, fail)
        if not exc_def.enabled:
            draft.disabled_exceptions.append(exc_def.id)
            continue
        draft.exceptions.append(
            PolicyException(
                id=exc_def.id,
                waives=exc_def.waives,
                justification=exc_def.justification,
                event_types=frozenset(scope.event_types),
                purposes=frozenset(scope.purposes),
                subcontractors=frozenset(name.strip().lower() for name in scope.subcontractors),
                recipients=frozenset(name.strip().lower() for name in scope.recipients),
                user_countries=frozenset(scope.user_countries),
                destination_countries=frozenset(scope.destination_countries),
            )
        )


def _check_scope(scope: ExceptionScope, entry: str, draft: _Draft, fail: Fail) -> None:
    """An exception must be scoped (an empty scope would waive its rule for every event), and its scope
    may name only purposes, subcontractors and countries the policy knows."""
    if not any(
        (
            scope.event_types,
            scope.purposes,
            scope.subcontractors,
            scope.recipients,
            scope.user_countries,
            scope.destination_countries,
        )
    ):
        raise fail(entry, "an exception must be scoped (empty scope)")
    for purpose_id in scope.purposes:
        if purpose_id not in draft.purposes:
            raise fail(f"{entry}.purposes", f"unknown purpose {purpose_id!r}")
    for name in scope.subcontractors:
        if name.strip().lower() not in draft.subcontractors:
            raise fail(f"{entry}.subcontractors", f"unknown subcontractor {name!r}")
    for code in (*scope.user_countries, *scope.destination_countries):
        if code not in draft.countries:
            raise fail(entry, f"unknown country code {code!r}")


# --- the file table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyFile(Generic[M]):
    """One file of a policy directory: its name, its schema, and the compiler of its stage."""

    name: str
    model: type[M]
    compile: Callable[[M, _Draft, Fail], None]
    stage: int


# The files of a policy directory, in the order they are read and hashed into the version and listed
# in `Policy.file_versions`. Do not reorder: every policy's version would change. `stage` is the order
# they are compiled in, each against what lower stages produced: countries (named by zones,
# subcontractors and exceptions), taxonomy, zones, register (names categories), subcontractors (zones,
# countries, purposes), rules (categories, purposes, zones), exceptions (rules and all of the above).
POLICY_TABLE: tuple[PolicyFile[Any], ...] = (
    PolicyFile("taxonomy.yaml", TaxonomyFile, _compile_taxonomy, stage=2),
    PolicyFile("register.yaml", RegisterFile, _compile_register, stage=4),
    PolicyFile("subcontractors.yaml", SubcontractorsFile, _compile_subcontractors, stage=5),
    PolicyFile("zones.yaml", ZonesFile, _compile_zones, stage=3),
    PolicyFile("countries.yaml", CountriesFile, _compile_countries, stage=1),
    PolicyFile("rules.yaml", RulesFile, _compile_rules, stage=6),
    PolicyFile("exceptions.yaml", ExceptionsFile, _compile_exceptions, stage=7),
)
POLICY_FILES = tuple(spec.name for spec in POLICY_TABLE)


def load_policy(directory: str | Path) -> Policy:
    """Read, validate and compile the policy in `directory`. Raises PolicyError on any problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(str(directory), "", "policy directory does not exist")
    # Every file is read and schema-checked before any is compiled: a broken file is reported as
    # itself, not as a dangling reference in a file compiled before it.
    read = [(spec, *read_policy_file(directory / spec.name, spec.model)) for spec in POLICY_TABLE]
    draft = _Draft()
    for spec, doc, _ in sorted(read, key=lambda item: item[0].stage):
        spec.compile(doc, draft, _failing(directory / spec.name))
    return Policy(
        directory=directory,
        version=_content_hash((spec.name, raw) for spec, _, raw in read),
        file_versions={spec.name: doc.version for spec, doc, _ in read},
        categories=draft.categories,
        field_categories=draft.field_categories,
        unclassified_category=draft.unclassified_category,
        unclassified_treated_as=draft.unclassified_treated_as,
        special_categories=draft.special_categories,
        purposes=draft.purposes,
        subcontractors=draft.subcontractors,
        subcontractor_list=tuple(draft.subcontractor_list),
        zones=draft.zones,
        protected_zone=draft.protected_zone,
        protected_countries=draft.zones[draft.protected_zone],
        countries=draft.countries,
        rules=tuple(draft.rules),
        exceptions=tuple(draft.exceptions),
        disabled_exceptions=tuple(draft.disabled_exceptions),
    )


def _failing(path: Path) -> Fail:
    def fail(entry: str, message: str) -> PolicyError:
        return PolicyError(str(path), entry, message)

    return fail


def _content_hash(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over each file's name, a NUL and the sha256 of its bytes, in the order given."""
    digest = hashlib.sha256()
    for name, raw in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return "sha256:" + digest.hexdigest()[:16]
