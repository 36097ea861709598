"""The compiled policy: what `load_policy` returns and the decision core reads.

Frozen dataclasses and plain containers only (sets, tuples, mappings of str), no pydantic models:
the file schemas (`files.py`) are the loader's business and end with it, so the rest of the code can
neither depend on how a file spells an entry nor mutate the policy it decides with. This module is the
package's ground floor: of flowaudit it imports only the table of event kinds (`domain.kinds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from flowaudit.domain.kinds import KIND_NAMES

# The event kinds a rule or an exception may be scoped to; also the kinds `events` accepts.
EVENT_TYPES = KIND_NAMES


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


@dataclass(frozen=True, slots=True)
class Category:
    """A data category of the taxonomy; `special_category` marks GDPR Art. 9 data."""

    description: str
    special_category: bool


@dataclass(frozen=True, slots=True)
class Subcontractor:
    """A registered processor (or the controller itself, `controller`). `serves_any`: it serves every
    purpose; `service_area`: the residences of the subjects whose data it may receive (None: any);
    `transfer_mechanism`: its Chapter V mechanism when it stores outside the protected zone."""

    name: str
    storage_countries: frozenset[str]
    storage_label: str
    service: str
    task: str
    purposes: tuple[str, ...]  # in registry order; empty when it serves any
    serves_any: bool
    controller: bool
    service_area: frozenset[str] | None
    encryption_required: bool
    transfer_mechanism: str | None
    source: str


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose of the register. `data_categories` is what it declares (every category for `all`);
    it holds the special categories exactly when `special_category_condition` is set."""

    id: str
    legal_basis: str
    special_category_condition: str | None
    description: str
    data_categories: frozenset[str]
    retention: str
    retention_period: str | None
    source: str


@dataclass(frozen=True, slots=True)
class Rule:
    """An enabled rule. `check` names its entry in the check registry (`checks.CHECKS`)."""

    id: str
    check: str
    description: str
    severity: str
    categories: frozenset[str]
    purposes: frozenset[str]
    legal_bases: frozenset[str]
    event_types: frozenset[str]
    zone_countries: frozenset[str]  # the zone's members as zones.yaml lists them (undated)
    zone: str  # the zone id the check judges against (default: the protected zone)
    source: str
    unless_purposes: frozenset[str] = frozenset()
    except_categories: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PolicyException:
    id: str
    waives: str
    justification: str
    event_types: frozenset[str]
    purposes: frozenset[str]
    subcontractors: frozenset[str]  # the registry's canonical names (matched on the resolved entry)
    recipients: frozenset[str]  # lower-case
    user_countries: frozenset[str]
    destination_countries: frozenset[str]
    requires_consent_id: bool
    source: str


@dataclass(frozen=True, slots=True)
class Era:
    """The Chapter V facts as they stood during one period: every zone's members (the protected
    zone's are dated), the countries with an adequacy decision in force, and the dated frameworks
    in force (mechanism -> the destination countries it covers)."""

    starts_ms: int  # epoch milliseconds; the first era starts at the earliest representable time
    zones: Mapping[str, frozenset[str]]
    adequate: frozenset[str]
    frameworks: Mapping[str, frozenset[str]]


@dataclass(frozen=True, slots=True)
class Timeline:
    """The eras of the adequacy registry, in order. `boundaries[i]` is when `eras[i + 1]` starts."""

    boundaries: tuple[int, ...]
    eras: tuple[Era, ...]
    frameworks: frozenset[str] = frozenset()  # mechanisms that exist only while a framework is in force


@dataclass(frozen=True, slots=True)
class Controller:
    """A controller of the Art. 30(1) record. `serves`: the user countries whose flows are its own
    (no country is served by two). The other fields are the record's header, as text."""

    id: str
    name: str
    serves: frozenset[str]
    serves_label: str  # the zone id (upper-case) or the countries, as the file gives them
    address: str | None
    email: str | None
    dpo: str | None
    supervisory_authority: str | None
    legal_framework: str | None
    parent: str | None
    hosting: str
    notice: str
    source: str


@dataclass(frozen=True, slots=True)
class SubjectCategory:
    """A category of data subjects (Art. 30(1)(c)). Empty `controllers`: every controller; empty
    `purposes`: every purpose (`[any]` in the file)."""

    id: str
    description: str
    controllers: frozenset[str]
    purposes: frozenset[str]
    source: str

    def concerns(self, controller: str, purpose: str) -> bool:
        return (not self.controllers or controller in self.controllers) and (
            not self.purposes or purpose in self.purposes
        )


@dataclass(frozen=True, slots=True)
class RecipientCategory:
    """A category of recipients (Art. 30(1)(d)). Empty `purposes`: not tied to a purpose;
    `recipient_types`: the sharing recipient types it covers for its purposes."""

    id: str
    description: str
    controllers: frozenset[str]
    purposes: frozenset[str]
    recipient_types: frozenset[str]
    source: str

    def for_controller(self, controller: str) -> bool:
        return not self.controllers or controller in self.controllers


@dataclass(frozen=True, slots=True)
class Policy:
    """The loaded policy: lookup tables ready for the decision core. Immutable."""

    directory: Path
    version: str
    file_versions: Mapping[str, str]
    categories: Mapping[str, Category]
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
    direct_identifiers: frozenset[str] = frozenset()
    flags: tuple[Rule, ...] = ()  # enabled advisory flags (never block)
    timeline: Timeline = Timeline((), ())
    controllers: tuple[Controller, ...] = ()  # the Art. 30(1) record's controllers (controllers.yaml)
    subject_categories: tuple[SubjectCategory, ...] = ()
    recipient_categories: tuple[RecipientCategory, ...] = ()

    def find_subcontractor(self, name: str) -> Subcontractor | None:
        return self.subcontractors.get(name.strip().lower())

    def controller_for(self, user_country: str | None) -> Controller | None:
        """The controller whose record a flow of a subject living in `user_country` belongs to
        (None: no controller serves that country, or the flow names none)."""
        for controller in self.controllers:
            if user_country is not None and user_country in controller.serves:
                return controller
        return None

    @property
    def special_reported_categories(self) -> frozenset[str]:
        """Reported categories that mean special-category data: the special ones, and `unclassified`
        when unknown fields are treated as special (fail closed)."""
        if self.unclassified_treated_as in self.special_categories:
            return self.special_categories | {self.unclassified_category}
        return self.special_categories
