"""Loading and validating the policy data files.

A policy directory holds seven YAML files (taxonomy, register, subcontractors, zones, countries, rules,
exceptions). `load_policy` reads them, validates each against its schema (pydantic models below), checks
the references between files, and compiles the result into a `Policy`: lookup tables the decision core
uses without further work. Any problem raises `PolicyError` naming the file and the entry at fault, so
a bad deploy fails at start-up rather than deciding with a half-read policy.

The policy version is a content hash over the files, so every decision can say which policy made it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flowaudit.domain.kinds import KIND_NAMES

POLICY_FILES = (
    "taxonomy.yaml",
    "register.yaml",
    "subcontractors.yaml",
    "zones.yaml",
    "countries.yaml",
    "rules.yaml",
    "exceptions.yaml",
)

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_RULE_ID = re.compile(r"^[a-z][a-z0-9-]*$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_ISO_DURATION = re.compile(r"^P(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?$")


class PolicyError(Exception):
    """A policy file is missing, unreadable, invalid, or inconsistent with another file."""

    def __init__(self, file: str, entry: str, message: str) -> None:
        self.file = file
        self.entry = entry
        self.message = message
        where = f"{file}: {entry}: " if entry else f"{file}: "
        super().__init__(where + message)


class LegalBasis(StrEnum):
    """GDPR Art. 6(1) legal bases."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


EVENT_TYPES = KIND_NAMES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FileHeader(_Strict):
    kind: str
    schema_version: Literal[1]
    version: str = Field(min_length=1)


# --- taxonomy -----------------------------------------------------------------------------------------


class CategoryDef(_Strict):
    description: str
    special_category: bool = False


class UnclassifiedDef(_Strict):
    category: str
    treated_as: str


class TaxonomyFile(_FileHeader):
    kind: Literal["taxonomy"]
    categories: dict[str, CategoryDef] = Field(min_length=1)
    unclassified: UnclassifiedDef
    fields: dict[str, list[str]]


# --- register -----------------------------------------------------------------------------------------


class PurposeDef(_Strict):
    legal_basis: LegalBasis
    description: str
    data_categories: list[str] = Field(min_length=1)
    retention: str
    retention_period: str | None = None
    source: str

    @field_validator("retention_period")
    @classmethod
    def _iso_duration(cls, value: str | None) -> str | None:
        if value is not None and (not _ISO_DURATION.match(value) or value == "P"):
            raise ValueError(f"not an ISO-8601 duration such as P10Y: {value!r}")
        return value


class RegisterFile(_FileHeader):
    kind: Literal["register"]
    purposes: dict[str, PurposeDef] = Field(min_length=1)


# --- subcontractors -----------------------------------------------------------------------------------


class StorageDef(_Strict):
    countries: list[str] | None = None
    zone: str | None = None


class SubcontractorDef(_Strict):
    name: str = Field(min_length=1)
    aliases: list[str] = []
    storage: StorageDef
    service: str
    task: str
    purposes: list[str] = []


class SubcontractorsFile(_FileHeader):
    kind: Literal["subcontractors"]
    subcontractors: list[SubcontractorDef]


# --- zones and countries ------------------------------------------------------------------------------


class ZoneDef(_Strict):
    description: str
    countries: list[str] = Field(min_length=1)


class ZonesFile(_FileHeader):
    kind: Literal["zones"]
    protected_zone: str
    zones: dict[str, ZoneDef] = Field(min_length=1)


class CountriesFile(_FileHeader):
    kind: Literal["countries"]
    countries: list[str] = Field(min_length=1)


# --- rules and exceptions -----------------------------------------------------------------------------

RuleCheck = Literal[
    "special_category_leaves_zone",
    "unknown_subcontractor",
    "subcontractor_location_mismatch",
    "unknown_purpose",
    "consent_missing",
    "categories_for_purposes",
    "requires_pseudonymization",
]


class RuleParams(_Strict):
    categories: list[str] = []
    purposes: list[str] = []
    legal_bases: list[LegalBasis] = []
    event_types: list[Literal["device_sync", "sharing", "subcontractor_transfer"]] = []
    zone: str | None = None


class RuleDef(_Strict):
    id: str
    check: RuleCheck
    description: str
    severity: Literal["critical", "high", "medium", "low"]
    enabled: bool = True
    params: RuleParams = RuleParams()


class RulesFile(_FileHeader):
    kind: Literal["rules"]
    rules: list[RuleDef] = Field(min_length=1)


class ExceptionScope(_Strict):
    event_types: list[Literal["device_sync", "sharing", "subcontractor_transfer"]] = []
    purposes: list[str] = []
    subcontractors: list[str] = []
    recipients: list[str] = []
    user_countries: list[str] = []
    destination_countries: list[str] = []


class ExceptionDef(_Strict):
    id: str
    enabled: bool
    waives: str
    justification: str = Field(min_length=10)
    scope: ExceptionScope


class ExceptionsFile(_FileHeader):
    kind: Literal["exceptions"]
    exceptions: list[ExceptionDef] = []


# --- the compiled policy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subcontractor:
    name: str
    storage_countries: frozenset[str]
    storage_label: str
    service: str
    task: str
    purposes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Purpose:
    id: str
    legal_basis: str
    description: str
    data_categories: frozenset[str]
    retention: str
    retention_period: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    check: str
    description: str
    severity: str
    categories: frozenset[str]
    purposes: frozenset[str]
    legal_bases: frozenset[str]
    event_types: frozenset[str]
    zone_countries: frozenset[str]


@dataclass(frozen=True, slots=True)
class PolicyException:
    id: str
    waives: str
    justification: str
    event_types: frozenset[str]
    purposes: frozenset[str]
    subcontractors: frozenset[str]  # lower-case
    recipients: frozenset[str]  # lower-case
    user_countries: frozenset[str]
    destination_countries: frozenset[str]


@dataclass(frozen=True, slots=True)
class Policy:
    """The loaded policy: lookup tables ready for the decision core. Immutable."""

    directory: Path
    version: str
    file_versions: Mapping[str, str]
    categories: Mapping[str, CategoryDef]
    field_categories: Mapping[str, str]
    unclassified_category: str
    unclassified_treated_as: str
    special_categories: frozenset[str]
    purposes: Mapping[str, Purpose]
    subcontractors: Mapping[str, Subcontractor]  # keyed by lower-cased name and aliases
    subcontractor_list: tuple[Subcontractor, ...]
    zones: Mapping[str, frozenset[str]]
    protected_zone: str
    protected_countries: frozenset[str]
    countries: frozenset[str]
    rules: tuple[Rule, ...]
    exceptions: tuple[PolicyException, ...]  # enabled ones only
    disabled_exceptions: tuple[str, ...]

    def find_subcontractor(self, name: str) -> Subcontractor | None:
        return self.subcontractors.get(name.strip().lower())

    @property
    def special_reported_categories(self) -> frozenset[str]:
        """Reported categories that mean special-category data: the special ones, and `unclassified`
        when unknown fields are treated as special (fail closed)."""
        if self.unclassified_treated_as in self.special_categories:
            return self.special_categories | {self.unclassified_category}
        return self.special_categories


# --- loading ------------------------------------------------------------------------------------------


class _PolicyYamlLoader(yaml.SafeLoader):
    """YAML 1.2-style booleans (only true/false) and no duplicate keys.

    PyYAML follows YAML 1.1, where `NO` (Norway) and `ON` are booleans; a country list must not
    silently lose Norway. A duplicate key would silently override the first entry.
    """


_PolicyYamlLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|false|True|False|TRUE|FALSE)$"), list("tTfF")
)


def _construct_mapping_no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_PolicyYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates
)


def load_yaml(raw: bytes | str) -> Any:
    """Parse YAML with the policy loader's rules (YAML 1.2 booleans, no duplicate keys)."""
    return yaml.load(raw, Loader=_PolicyYamlLoader)


def _format_location(loc: tuple[int | str, ...], data: Any) -> str:
    """Turn a pydantic error location into a readable entry path; list indexes become entry names."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            entry = node[item]
            label = None
            if isinstance(entry, dict):
                label = entry.get("id") or entry.get("name")
            parts.append(f"[{item}]" + (f"({label})" if label else ""))
            node = entry
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _read(directory: Path, filename: str, model: type[_FileHeader]) -> tuple[Any, bytes]:
    path = directory / filename
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(str(path), "", f"cannot read policy file: {exc.strerror or exc}") from exc
    try:
        data = load_yaml(raw)
    except yaml.YAMLError as exc:
        raise PolicyError(str(path), "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(str(path), "", "must be a YAML mapping")
    try:
        return model.model_validate(data), raw
    except ValidationError as exc:
        first = exc.errors()[0]
        entry = _format_location(tuple(first["loc"]), data)
        extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise PolicyError(str(path), entry, f"{first['msg']}{extra}") from exc


def load_policy(directory: str | Path) -> Policy:
    """Read, validate and compile the policy in `directory`. Raises PolicyError on any problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(str(directory), "", "policy directory does not exist")
    taxonomy, raw_taxonomy = _read(directory, "taxonomy.yaml", TaxonomyFile)
    register, raw_register = _read(directory, "register.yaml", RegisterFile)
    subs, raw_subs = _read(directory, "subcontractors.yaml", SubcontractorsFile)
    zones, raw_zones = _read(directory, "zones.yaml", ZonesFile)
    countries, raw_countries = _read(directory, "countries.yaml", CountriesFile)
    rules, raw_rules = _read(directory, "rules.yaml", RulesFile)
    exceptions, raw_exceptions = _read(directory, "exceptions.yaml", ExceptionsFile)
    raws = (raw_taxonomy, raw_register, raw_subs, raw_zones, raw_countries, raw_rules, raw_exceptions)

    def fail(filename: str, entry: str, message: str) -> PolicyError:
        return PolicyError(str(directory / filename), entry, message)

    # countries
    country_set: set[str] = set()
    for index, code in enumerate(countries.countries):
        if not _COUNTRY.match(code):
            raise fail("countries.yaml", f"countries[{index}]", f"not an upper-case alpha-2 code: {code!r}")
        if code in country_set:
            raise fail("countries.yaml", f"countries[{index}]", f"duplicate country {code!r}")
        country_set.add(code)

    # taxonomy
    for name in taxonomy.categories:
        if not _IDENTIFIER.match(name):
            raise fail("taxonomy.yaml", f"categories.{name}", "category ids are lower_snake_case")
    unclassified = taxonomy.unclassified
    if unclassified.category in taxonomy.categories:
        raise fail("taxonomy.yaml", "unclassified.category", "must not be one of the declared categories")
    if unclassified.treated_as not in taxonomy.categories:
        raise fail(
            "taxonomy.yaml", "unclassified.treated_as", f"unknown category {unclassified.treated_as!r}"
        )
    field_categories: dict[str, str] = {}
    for category, field_names in taxonomy.fields.items():
        if category not in taxonomy.categories:
            raise fail("taxonomy.yaml", f"fields.{category}", "fields listed under an undeclared category")
        for field in field_names:
            if not _IDENTIFIER.match(field):
                raise fail("taxonomy.yaml", f"fields.{category}.{field}", "field names are lower_snake_case")
            if field in field_categories:
                raise fail(
                    "taxonomy.yaml",
                    f"fields.{category}.{field}",
                    f"field already mapped to category {field_categories[field]!r}; "
                    "every field maps to exactly one category",
                )
            field_categories[field] = category
    special = frozenset(name for name, cat in taxonomy.categories.items() if cat.special_category)

    # zones
    zone_sets: dict[str, frozenset[str]] = {}
    for zone_id, zone in zones.zones.items():
        for code in zone.countries:
            if code not in country_set:
                raise fail("zones.yaml", f"zones.{zone_id}.countries", f"unknown country code {code!r}")
        zone_sets[zone_id] = frozenset(zone.countries)
    if zones.protected_zone not in zone_sets:
        raise fail("zones.yaml", "protected_zone", f"unknown zone {zones.protected_zone!r}")

    # register
    purposes: dict[str, Purpose] = {}
    for purpose_id, purpose in register.purposes.items():
        if not _IDENTIFIER.match(purpose_id):
            raise fail("register.yaml", f"purposes.{purpose_id}", "purpose ids are lower_snake_case")
        for category in purpose.data_categories:
            if category not in taxonomy.categories:
                raise fail(
                    "register.yaml",
                    f"purposes.{purpose_id}.data_categories",
                    f"unknown category {category!r}",
                )
        purposes[purpose_id] = Purpose(
            id=purpose_id,
            legal_basis=purpose.legal_basis.value,
            description=purpose.description,
            data_categories=frozenset(purpose.data_categories),
            retention=purpose.retention,
            retention_period=purpose.retention_period,
        )

    # subcontractors
    by_name: dict[str, Subcontractor] = {}
    sub_list: list[Subcontractor] = []
    for index, sub in enumerate(subs.subcontractors):
        entry = f"subcontractors[{index}]({sub.name})"
        storage = sub.storage
        if (storage.countries is None) == (storage.zone is None):
            raise fail("subcontractors.yaml", f"{entry}.storage", "give exactly one of `countries` or `zone`")
        if storage.zone is not None:
            if storage.zone not in zone_sets:
                raise fail("subcontractors.yaml", f"{entry}.storage.zone", f"unknown zone {storage.zone!r}")
            storage_countries = zone_sets[storage.zone]
            label = storage.zone.upper()
        else:
            assert storage.countries is not None
            for code in storage.countries:
                if code not in country_set:
                    raise fail(
                        "subcontractors.yaml", f"{entry}.storage.countries", f"unknown country code {code!r}"
                    )
            storage_countries = frozenset(storage.countries)
            label = ",".join(storage.countries)
        for purpose_id in sub.purposes:
            if purpose_id not in purposes:
                raise fail("subcontractors.yaml", f"{entry}.purposes", f"unknown purpose {purpose_id!r}")
        compiled = Subcontractor(
            name=sub.name,
            storage_countries=storage_countries,
            storage_label=label,
            service=sub.service,
            task=sub.task,
            purposes=tuple(sub.purposes),
        )
        sub_list.append(compiled)
        for key in (sub.name, *sub.aliases):
            folded = key.strip().lower()
            if folded in by_name:
                raise fail("subcontractors.yaml", entry, f"name or alias {key!r} is already registered")
            by_name[folded] = compiled

    # rules
    compiled_rules: list[Rule] = []
    rule_ids: set[str] = set()
    for index, rule in enumerate(rules.rules):
        entry = f"rules[{index}]({rule.id})"
        if not _RULE_ID.match(rule.id):
            raise fail("rules.yaml", entry, "rule ids are lower-kebab-case")
        if rule.id in rule_ids:
            raise fail("rules.yaml", entry, f"duplicate rule id {rule.id!r}")
        rule_ids.add(rule.id)
        params = rule.params
        for category in params.categories:
            if category not in taxonomy.categories:
                raise fail("rules.yaml", f"{entry}.params.categories", f"unknown category {category!r}")
        for purpose_id in params.purposes:
            if purpose_id not in purposes:
                raise fail("rules.yaml", f"{entry}.params.purposes", f"unknown purpose {purpose_id!r}")
        zone_id = params.zone or zones.protected_zone
        if zone_id not in zone_sets:
            raise fail("rules.yaml", f"{entry}.params.zone", f"unknown zone {zone_id!r}")
        needs = {
            "special_category_leaves_zone": ("categories",),
            "categories_for_purposes": ("categories", "purposes"),
            "requires_pseudonymization": ("purposes",),
        }.get(rule.check, ())
        for name in needs:
            if not getattr(params, name):
                raise fail("rules.yaml", f"{entry}.params.{name}", f"check {rule.check!r} needs {name}")
        if rule.check == "consent_missing" and not (params.legal_bases or params.event_types):
            raise fail("rules.yaml", f"{entry}.params", "consent_missing needs legal_bases or event_types")
        if rule.enabled:
            compiled_rules.append(
                Rule(
                    id=rule.id,
                    check=rule.check,
                    description=rule.description,
                    severity=rule.severity,
                    categories=frozenset(params.categories),
                    purposes=frozenset(params.purposes),
                    legal_bases=frozenset(basis.value for basis in params.legal_bases),
                    event_types=frozenset(params.event_types),
                    zone_countries=zone_sets[zone_id],
                )
            )

    # exceptions
    enabled_exceptions: list[PolicyException] = []
    disabled: list[str] = []
    exception_ids: set[str] = set()
    for index, exc_def in enumerate(exceptions.exceptions):
        entry = f"exceptions[{index}]({exc_def.id})"
        if exc_def.id in exception_ids:
            raise fail("exceptions.yaml", entry, f"duplicate exception id {exc_def.id!r}")
        exception_ids.add(exc_def.id)
        if exc_def.waives not in rule_ids:
            raise fail("exceptions.yaml", f"{entry}.waives", f"unknown rule {exc_def.waives!r}")
        scope = exc_def.scope
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
            raise fail("exceptions.yaml", f"{entry}.scope", "an exception must be scoped (empty scope)")
        for purpose_id in scope.purposes:
            if purpose_id not in purposes:
                raise fail("exceptions.yaml", f"{entry}.scope.purposes", f"unknown purpose {purpose_id!r}")
        for name in scope.subcontractors:
            if name.strip().lower() not in by_name:
                raise fail(
                    "exceptions.yaml", f"{entry}.scope.subcontractors", f"unknown subcontractor {name!r}"
                )
        for code in (*scope.user_countries, *scope.destination_countries):
            if code not in country_set:
                raise fail("exceptions.yaml", f"{entry}.scope", f"unknown country code {code!r}")
        if not exc_def.enabled:
            disabled.append(exc_def.id)
            continue
        enabled_exceptions.append(
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

    digest = hashlib.sha256()
    for filename, raw in zip(POLICY_FILES, raws, strict=True):
        digest.update(filename.encode() + b"\0" + hashlib.sha256(raw).digest())
    file_versions = {
        "taxonomy.yaml": taxonomy.version,
        "register.yaml": register.version,
        "subcontractors.yaml": subs.version,
        "zones.yaml": zones.version,
        "countries.yaml": countries.version,
        "rules.yaml": rules.version,
        "exceptions.yaml": exceptions.version,
    }
    return Policy(
        directory=directory,
        version="sha256:" + digest.hexdigest()[:16],
        file_versions=file_versions,
        categories=dict(taxonomy.categories),
        field_categories=field_categories,
        unclassified_category=unclassified.category,
        unclassified_treated_as=unclassified.treated_as,
        special_categories=special,
        purposes=purposes,
        subcontractors=by_name,
        subcontractor_list=tuple(sub_list),
        zones=zone_sets,
        protected_zone=zones.protected_zone,
        protected_countries=zone_sets[zones.protected_zone],
        countries=frozenset(country_set),
        rules=tuple(compiled_rules),
        exceptions=tuple(enabled_exceptions),
        disabled_exceptions=tuple(disabled),
    )
