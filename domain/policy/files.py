"""The policy files as written: one pydantic schema per YAML file, and reading one file.

`read_policy_file` turns a file into its validated model (or raises `PolicyError` naming the file and
the entry at fault); checks that need another file, and turning the models into the compiled
`Policy`, are `load.py`'s. The models here never leave the loader.

YAML is read with YAML 1.2 booleans (only true/false) and without duplicate keys (`load_yaml`).
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from flowaudit.domain.policy.checks import CHECKS
from flowaudit.domain.policy.model import EVENT_TYPES, LegalBasis, PolicyError

_ISO_DURATION = re.compile(r"^P(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileHeader(_Strict):
    """The keys every policy file starts with. Each file's model narrows `schema_version` to the
    versions its loader reads (the files contract v2 changed are at version 2)."""

    kind: str
    schema_version: int
    version: str = Field(min_length=1)


# Where an entry's facts come from: "<seed> §<section>" (e.g. '003 §"Accounts."', "000 §HOSTING") or
# "contract" where the seeds are silent. Every entry of every file gives one (contract v2 preamble).
Source = Annotated[str, Field(min_length=3)]


# --- taxonomy -----------------------------------------------------------------------------------------


class CategoryDef(_Strict):
    description: str
    special_category: bool = False
    source: Source


class UnclassifiedDef(_Strict):
    category: str
    treated_as: str
    source: Source


class DirectIdentifiersDef(_Strict):
    """The fields that identify a person directly: pseudonymized data must not carry them."""

    fields: list[str] = Field(min_length=1)
    source: Source


class TaxonomyFile(FileHeader):
    kind: Literal["taxonomy"]
    schema_version: Literal[2]
    categories: dict[str, CategoryDef] = Field(min_length=1)
    unclassified: UnclassifiedDef
    direct_identifiers: DirectIdentifiersDef
    fields: dict[str, list[str]]
    field_sources: dict[str, Source]


# --- register -----------------------------------------------------------------------------------------


# GDPR Art. 9(2) conditions under which a purpose may process special-category (health) data.
SpecialCategoryCondition = Literal["explicit_consent", "health_care", "public_health", "scientific_research"]

# `data_categories: [all]`: the purpose declares every category of the taxonomy.
ALL_CATEGORIES = "all"


class PurposeDef(_Strict):
    legal_basis: LegalBasis
    special_category_condition: SpecialCategoryCondition | None
    description: str
    data_categories: list[str] = Field(min_length=1)
    retention: str
    retention_period: str | None = None
    source: Source
    sources: dict[str, Source] = {}
    notes: str | None = None  # for the DPO: what the entry rests on, questions still open

    @field_validator("retention_period")
    @classmethod
    def _iso_duration(cls, value: str | None) -> str | None:
        if value is not None and (not _ISO_DURATION.match(value) or value == "P"):
            raise ValueError(f"not an ISO-8601 duration such as P10Y: {value!r}")
        return value


class RegisterFile(FileHeader):
    kind: Literal["register"]
    schema_version: Literal[2]
    purposes: dict[str, PurposeDef] = Field(min_length=1)


# --- subcontractors -----------------------------------------------------------------------------------


class StorageDef(_Strict):
    countries: list[str] | None = None
    zone: str | None = None


# `purposes: [any]`: the entry serves every purpose (the controller, listed as its own host).
ANY_PURPOSE = "any"


class SubcontractorDef(_Strict):
    name: str = Field(min_length=1)
    aliases: list[str] = []
    controller: bool = False
    storage: StorageDef
    service: str
    task: str
    purposes: list[str] = Field(min_length=1)
    service_area: StorageDef | None
    encryption_required: bool
    transfer_mechanism: Literal["scc", "bcr", "dpf"] | None
    source: Source
    sources: dict[str, Source] = {}


class SubcontractorsFile(FileHeader):
    kind: Literal["subcontractors"]
    schema_version: Literal[2]
    subcontractors: list[SubcontractorDef]


# --- zones and countries ------------------------------------------------------------------------------


class ZoneDef(_Strict):
    description: str
    countries: list[str] = Field(min_length=1)


class ZonesFile(FileHeader):
    kind: Literal["zones"]
    schema_version: Literal[1]
    protected_zone: str
    zones: dict[str, ZoneDef] = Field(min_length=1)


class CountriesFile(FileHeader):
    kind: Literal["countries"]
    schema_version: Literal[1]
    countries: list[str] = Field(min_length=1)


# --- rules and exceptions -----------------------------------------------------------------------------


def _registered_check(value: object) -> object:
    """A rule's `check` must be a name in the check registry. The error is worded as pydantic words a
    Literal's (which this replaces), so a misspelt check reads as it always did: the valid names."""
    if isinstance(value, str) and value in CHECKS:
        return value
    names = [repr(name) for name in CHECKS]
    expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


def _known_kind(value: object) -> object:
    """An event kind of the kinds table (`domain.kinds`), with the message a Literal would give."""
    if isinstance(value, str) and value in EVENT_TYPES:
        return value
    names = [repr(name) for name in EVENT_TYPES]
    expected = ", ".join(names[:-1]) + " or " + names[-1]
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


EventKind = Annotated[str, BeforeValidator(_known_kind)]


class RuleParams(_Strict):
    categories: list[str] = []
    purposes: list[str] = []
    unless_purposes: list[str] = []  # purposes the check never fires for
    except_categories: list[str] = []  # categories that alone do not make the check fire
    legal_bases: list[LegalBasis] = []
    event_types: list[EventKind] = []
    zone: str | None = None


class RuleDef(_Strict):
    id: str
    check: Annotated[str, BeforeValidator(_registered_check)]
    description: str
    severity: Literal["critical", "high", "medium", "low"]
    enabled: bool = True
    params: RuleParams = RuleParams()
    source: Source


class RulesFile(FileHeader):
    """Rules block an event when they fire; flags (same entries, same checks) are advisory only."""

    kind: Literal["rules"]
    schema_version: Literal[2]
    rules: list[RuleDef] = Field(min_length=1)
    flags: list[RuleDef] = []


class ExceptionScope(_Strict):
    event_types: list[EventKind] = []
    purposes: list[str] = []
    subcontractors: list[str] = []
    recipients: list[str] = []
    user_countries: list[str] = []
    destination_countries: list[str] = []
    requires_consent_id: bool = False  # the event must carry a (non-empty) consent reference


class ExceptionDef(_Strict):
    id: str
    enabled: bool
    waives: str
    justification: str = Field(min_length=10)
    scope: ExceptionScope
    source: Source


class ExceptionsFile(FileHeader):
    kind: Literal["exceptions"]
    schema_version: Literal[2]
    exceptions: list[ExceptionDef] = []


# --- adequacy (Chapter V, in time) --------------------------------------------------------------------


class DatedDef(_Strict):
    """A period of days: from 00:00 UTC of `from` (absent: always before) through the end of `until`
    (inclusive; absent: still in force)."""

    from_: date | None = Field(default=None, alias="from")
    until: date | None = None
    source: Source


class FrameworkDef(_Strict):
    """A transfer mechanism that exists only from a date and for one destination country (the EU-US
    Data Privacy Framework): a recipient registered with it is covered only while it is in force."""

    country: str
    from_: date = Field(alias="from")
    until: date | None = None
    scope: Literal["certified_recipients"]
    source: Source


class AdequacyFile(FileHeader):
    kind: Literal["adequacy"]
    schema_version: Literal[1]
    decisions: dict[str, DatedDef]
    frameworks: dict[Literal["scc", "bcr", "dpf"], FrameworkDef] = {}
    zone_membership: dict[str, dict[str, DatedDef]] = {}


# --- controllers (the Art. 30(1) record) --------------------------------------------------------------


def _iso_duration(value: str | None) -> str | None:
    if value is not None and (not _ISO_DURATION.match(value) or value == "P"):
        raise ValueError(f"not an ISO-8601 duration such as P10Y: {value!r}")
    return value


Duration = Annotated[str | None, AfterValidator(_iso_duration)]


class DpoDef(_Strict):
    title: str
    postal: str | None = None
    email: str | None = None
    source: Source


class AuthorityDef(_Strict):
    name: str
    address: str | None = None
    source: Source


class NoticeDef(_Strict):
    """The privacy notice the controller's facts are read from."""

    seed: str
    reference: str | None = None
    updated: date
    superseded: bool = False


class HistoryDef(_Strict):
    """An earlier fact kept for the record (an old address, a CNIL declaration): never decided on."""

    address: str
    cnil_declaration: str | None = None
    source: Source


class ControllerDef(_Strict):
    id: str
    name: str = Field(min_length=1)
    serves: StorageDef  # whose flows are this controller's, by the subject's user_country
    address: str | None
    email: str | None
    dpo: DpoDef | None
    supervisory_authority: AuthorityDef | None
    legal_framework: str | None = None
    parent: str | None = None
    hosting: StorageDef
    erasure_within: Duration = None
    inactive_account_after: Duration = None
    notice: NoticeDef
    history: list[HistoryDef] = []
    source: Source
    sources: dict[str, Source] = {}


class DataSubjectCategoryDef(_Strict):
    id: str
    description: str
    controllers: list[str] = []  # empty: every controller
    purposes: list[str] = Field(min_length=1)  # [any]: every purpose
    source: Source
    sources: dict[str, Source] = {}


class RecipientCategoryDef(_Strict):
    id: str
    description: str
    controllers: list[str] = []  # empty: every controller
    purposes: list[str] = []  # empty: not tied to a purpose
    recipient_types: list[str] = []  # the sharing recipient types it covers
    source: Source
    sources: dict[str, Source] = {}


class ControllersFile(FileHeader):
    kind: Literal["controllers"]
    schema_version: Literal[1]
    controllers: list[ControllerDef] = Field(min_length=1)
    data_subject_categories: list[DataSubjectCategoryDef] = Field(min_length=1)
    recipient_categories: list[RecipientCategoryDef] = []


# --- reading ------------------------------------------------------------------------------------------


M = TypeVar("M", bound=FileHeader)


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


def read_policy_file(path: Path, model: type[M]) -> tuple[M, bytes]:
    """Read, parse and validate one policy file; returns the model and the raw bytes (for the hash)."""
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
