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
    """An enabled rule. `check` names its entry in the check registry (`checks.CHECKS`)."""

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

    def find_subcontractor(self, name: str) -> Subcontractor | None:
        return self.subcontractors.get(name.strip().lower())

    @property
    def special_reported_categories(self) -> frozenset[str]:
        """Reported categories that mean special-category data: the special ones, and `unclassified`
        when unknown fields are treated as special (fail closed)."""
        if self.unclassified_treated_as in self.special_categories:
            return self.special_categories | {self.unclassified_category}
        return self.special_categories
