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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Generic

from flowaudit.domain.kinds import RECIPIENT_TYPES
from flowaudit.domain.policy.checks import CHECKS
from flowaudit.domain.policy.files import (
    ALL_CATEGORIES,
    ANY_PURPOSE,
    AdequacyFile,
    ControllerDef,
    ControllersFile,
    CountriesFile,
    DatedDef,
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
    Controller,
    Era,
    Policy,
    PolicyError,
    PolicyException,
    Purpose,
    RecipientCategory,
    Rule,
    Subcontractor,
    SubjectCategory,
    Timeline,
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
    direct_identifiers: frozenset[str] = frozenset()
    zones: dict[str, frozenset[str]] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=lambda: Timeline((), ()))
    protected_zone: str = ""
    purposes: dict[str, Purpose] = field(default_factory=dict)
    subcontractors: dict[str, Subcontractor] = field(default_factory=dict)  # lower-cased names, aliases
    subcontractor_list: list[Subcontractor] = field(default_factory=list)
    rule_ids: set[str] = field(default_factory=set)  # disabled rules too: an exception may waive one
    rules: list[Rule] = field(default_factory=list)  # enabled ones
    flags: list[Rule] = field(default_factory=list)  # enabled ones
    exceptions: list[PolicyException] = field(default_factory=list)  # enabled ones
    disabled_exceptions: list[str] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    subject_categories: list[SubjectCategory] = field(default_factory=list)
    recipient_categories: list[RecipientCategory] = field(default_factory=list)


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
    _check_field_sources(doc, draft.field_categories, fail)
    for name in doc.direct_identifiers.fields:
        if name not in draft.field_categories:
            raise fail("direct_identifiers.fields", f"unknown field {name!r}")
    draft.direct_identifiers = frozenset(doc.direct_identifiers.fields)
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


def _check_field_sources(doc: TaxonomyFile, field_categories: Mapping[str, str], fail: Fail) -> None:
    """Every field of the vocabulary names its source, and a source is given only for a field of it."""
    for name in field_categories:
        if name not in doc.field_sources:
            raise fail(
                f"field_sources.{name}", "every field names its source (seed and section, or contract)"
            )
    for name in doc.field_sources:
        if name not in field_categories:
            raise fail(f"field_sources.{name}", "a source for a field that no category lists")


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
        entry = f"purposes.{purpose_id}"
        if not _IDENTIFIER.match(purpose_id):
            raise fail(entry, "purpose ids are lower_snake_case")
        if purpose_id == ANY_PURPOSE:
            raise fail(entry, f"{ANY_PURPOSE!r} is reserved: a subcontractor serving every purpose")
        declared = _declared_categories(purpose.data_categories, f"{entry}.data_categories", draft, fail)
        condition = purpose.special_category_condition
        special = declared & draft.special_categories
        # Contract v2 §3: health counts as declared exactly where the purpose has an Art. 9(2) condition.
        if special and condition is None:
            raise fail(
                f"{entry}.special_category_condition",
                f"declares {', '.join(sorted(special))} but names no Art. 9(2) condition",
            )
        if condition is not None and not special:
            raise fail(
                f"{entry}.data_categories",
                f"names Art. 9(2) condition {condition!r} but declares no special category",
            )
        draft.purposes[purpose_id] = Purpose(
            id=purpose_id,
            legal_basis=purpose.legal_basis.value,
            special_category_condition=condition,
            description=purpose.description,
            data_categories=declared,
            retention=purpose.retention,
            retention_period=purpose.retention_period,
            source=purpose.source,
        )


def _declared_categories(names: list[str], entry: str, draft: _Draft, fail: Fail) -> frozenset[str]:
    """A purpose's declared categories: the names given, or every category for `all` (alone)."""
    if ALL_CATEGORIES in names:
        if len(names) > 1:
            raise fail(entry, f"{ALL_CATEGORIES!r} stands alone")
        return frozenset(draft.categories)
    for category in names:
        if category not in draft.categories:
            raise fail(entry, f"unknown category {category!r}")
    return frozenset(names)


def _compile_subcontractors(doc: SubcontractorsFile, draft: _Draft, fail: Fail) -> None:
    controllers = [sub.name for sub in doc.subcontractors if sub.controller]
    if len(controllers) > 1:
        raise fail("subcontractors", f"only one entry may be the controller: {', '.join(controllers)}")
    for index, sub in enumerate(doc.subcontractors):
        entry = f"subcontractors[{index}]({sub.name})"
        storage_countries, label = _storage(sub.storage, f"{entry}.storage", draft, fail)
        serves_any = _served_purposes(sub.purposes, f"{entry}.purposes", draft, fail)
        area = None
        if sub.service_area is not None:
            area, _ = _storage(sub.service_area, f"{entry}.service_area", draft, fail)
        compiled = Subcontractor(
            name=sub.name,
            storage_countries=storage_countries,
            storage_label=label,
            service=sub.service,
            task=sub.task,
            purposes=tuple(p for p in sub.purposes if p != ANY_PURPOSE),
            serves_any=serves_any,
            controller=sub.controller,
            service_area=area,
            encryption_required=sub.encryption_required,
            transfer_mechanism=sub.transfer_mechanism,
            source=sub.source,
        )
        draft.subcontractor_list.append(compiled)
        # Events name processors loosely (case, aliases); all spellings must lead to one entry.
        for key in (sub.name, *sub.aliases):
            folded = key.strip().lower()
            if folded in draft.subcontractors:
                raise fail(entry, f"name or alias {key!r} is already registered")
            draft.subcontractors[folded] = compiled


def _served_purposes(purposes: list[str], entry: str, draft: _Draft, fail: Fail) -> bool:
    """Check a subcontractor's purposes; True when it serves every purpose (`any`, alone)."""
    if ANY_PURPOSE in purposes:
        if len(purposes) > 1:
            raise fail(entry, f"{ANY_PURPOSE!r} stands alone")
        return True
    for purpose_id in purposes:
        if purpose_id not in draft.purposes:
            raise fail(entry, f"unknown purpose {purpose_id!r}")
    return False


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
    flag_ids: set[str] = set()
    for section, entries, compiled in (("rules", doc.rules, draft.rules), ("flags", doc.flags, draft.flags)):
        for index, rule in enumerate(entries):
            entry = f"{section}[{index}]({rule.id})"
            if not _RULE_ID.match(rule.id):
                raise fail(entry, "rule and flag ids are lower-kebab-case")
            if rule.id in draft.rule_ids or rule.id in flag_ids:
                raise fail(entry, f"duplicate rule or flag id {rule.id!r}")
            (draft.rule_ids if section == "rules" else flag_ids).add(rule.id)
            zone_countries = _check_rule_params(rule, f"{entry}.params", draft, fail)
            if rule.enabled:
                compiled.append(_rule(rule, zone_countries, draft))


def _rule(rule: RuleDef, zone_countries: frozenset[str], draft: _Draft) -> Rule:
    params = rule.params
    return Rule(
        id=rule.id,
        check=rule.check,
        description=rule.description,
        severity=rule.severity,
        categories=frozenset(params.categories),
        purposes=frozenset(params.purposes),
        legal_bases=frozenset(basis.value for basis in params.legal_bases),
        event_types=frozenset(params.event_types),
        zone_countries=zone_countries,
        zone=params.zone or draft.protected_zone,
        source=rule.source,
        unless_purposes=frozenset(params.unless_purposes),
        except_categories=frozenset(params.except_categories),
    )


def _check_rule_params(rule: RuleDef, entry: str, draft: _Draft, fail: Fail) -> frozenset[str]:
    """Check a rule's params against the earlier files and against what its check needs; returns the
    countries of the rule's zone (default: the protected zone)."""
    params = rule.params
    for name, categories in (
        ("categories", params.categories),
        ("except_categories", params.except_categories),
    ):
        for category in categories:
            if category not in draft.categories:
                raise fail(f"{entry}.{name}", f"unknown category {category!r}")
    for name, purposes in (("purposes", params.purposes), ("unless_purposes", params.unless_purposes)):
        for purpose_id in purposes:
            if purpose_id not in draft.purposes:
                raise fail(f"{entry}.{name}", f"unknown purpose {purpose_id!r}")
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
                # matched on the resolved entry, so every alias of a scoped subcontractor is in scope
                subcontractors=frozenset(
                    draft.subcontractors[name.strip().lower()].name for name in scope.subcontractors
                ),
                recipients=frozenset(name.strip().lower() for name in scope.recipients),
                user_countries=frozenset(scope.user_countries),
                destination_countries=frozenset(scope.destination_countries),
                requires_consent_id=scope.requires_consent_id,
                source=exc_def.source,
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


def _compile_adequacy(doc: AdequacyFile, draft: _Draft, fail: Fail) -> None:
    """The Chapter V registry in time: cut the calendar at every date a decision, a framework or a
    dated zone membership starts or ends, and record for each period what stood then."""
    dated: list[tuple[str, str, DatedDef]] = []  # (what, key, period)
    for code, period in doc.decisions.items():
        _check_known_country(code, f"decisions.{code}", draft, fail)
        dated.append(("adequacy", code, period))
    for zone_id, members in doc.zone_membership.items():
        if zone_id not in draft.zones:
            raise fail(f"zone_membership.{zone_id}", f"unknown zone {zone_id!r}")
        for code, period in members.items():
            _check_known_country(code, f"zone_membership.{zone_id}.{code}", draft, fail)
            dated.append((zone_id, code, period))
    for mechanism, framework in doc.frameworks.items():
        _check_known_country(framework.country, f"frameworks.{mechanism}.country", draft, fail)
        period = DatedDef.model_validate(
            {"from": framework.from_, "until": framework.until, "source": framework.source}
        )
        dated.append(("framework:" + mechanism, framework.country, period))
    for what, key, period in dated:
        if period.from_ and period.until and period.until < period.from_:
            raise fail(f"{what}.{key}", "`until` is before `from`")
    cuts = sorted(
        {_start_ms(p.from_) for _, _, p in dated if p.from_}
        | {_end_ms(p.until) for _, _, p in dated if p.until}
    )
    starts = [_EARLIEST_MS, *cuts]
    eras = tuple(_era(start, dated, draft) for start in starts)
    draft.timeline = Timeline(tuple(cuts), eras, frozenset(doc.frameworks))


_EARLIEST_MS = -(2**62)


def _start_ms(day: date) -> int:
    """00:00 UTC of `day`, in epoch milliseconds."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def _end_ms(day: date) -> int:
    """The first millisecond after `day` (an `until` date is inclusive)."""
    return _start_ms(day + timedelta(days=1))


def _in_force(period: DatedDef, at_ms: int) -> bool:
    return (period.from_ is None or _start_ms(period.from_) <= at_ms) and (
        period.until is None or at_ms < _end_ms(period.until)
    )


def _era(start_ms: int, dated: list[tuple[str, str, DatedDef]], draft: _Draft) -> Era:
    zones = {zone_id: set(members) for zone_id, members in draft.zones.items()}
    adequate: set[str] = set()
    frameworks: dict[str, set[str]] = {}
    for what, key, period in dated:
        if not _in_force(period, start_ms):
            continue
        if what == "adequacy":
            adequate.add(key)
        elif what.startswith("framework:"):
            frameworks.setdefault(what.removeprefix("framework:"), set()).add(key)
        else:
            zones[what].add(key)
    return Era(
        starts_ms=start_ms,
        zones={zone_id: frozenset(members) for zone_id, members in zones.items()},
        adequate=frozenset(adequate),
        frameworks={name: frozenset(countries) for name, countries in frameworks.items()},
    )


def _check_known_country(code: str, entry: str, draft: _Draft, fail: Fail) -> None:
    if code not in draft.countries:
        raise fail(entry, f"unknown country code {code!r}")


def _compile_controllers(doc: ControllersFile, draft: _Draft, fail: Fail) -> None:
    """The controllers of the Art. 30 record: who serves which user countries (no country twice), and
    the categories of data subjects and recipients, each checked against controllers and purposes."""
    served_by: dict[str, str] = {}
    for index, controller in enumerate(doc.controllers):
        entry = f"controllers[{index}]({controller.id})"
        if not _IDENTIFIER.match(controller.id):
            raise fail(entry, "controller ids are lower_snake_case")
        if any(known.id == controller.id for known in draft.controllers):
            raise fail(entry, f"duplicate controller id {controller.id!r}")
        serves, serves_label = _storage(controller.serves, f"{entry}.serves", draft, fail)
        for code in sorted(serves):
            if code in served_by:
                raise fail(f"{entry}.serves", f"{code} is already served by {served_by[code]!r}")
            served_by[code] = controller.id
        _, hosting = _storage(controller.hosting, f"{entry}.hosting", draft, fail)
        draft.controllers.append(_controller(controller, serves, serves_label, hosting))
    ids = {controller.id for controller in draft.controllers}
    for index, subjects in enumerate(doc.data_subject_categories):
        entry = f"data_subject_categories[{index}]({subjects.id})"
        _check_category_scope(subjects.id, subjects.controllers, subjects.purposes, entry, ids, draft, fail)
        purposes = () if subjects.purposes == [ANY_PURPOSE] else subjects.purposes
        draft.subject_categories.append(
            SubjectCategory(
                subjects.id,
                subjects.description,
                frozenset(subjects.controllers),
                frozenset(purposes),
                subjects.source,
            )
        )
    for index, recipients in enumerate(doc.recipient_categories):
        entry = f"recipient_categories[{index}]({recipients.id})"
        _check_category_scope(
            recipients.id, recipients.controllers, recipients.purposes, entry, ids, draft, fail
        )
        for kind in recipients.recipient_types:
            if kind not in RECIPIENT_TYPES:
                raise fail(f"{entry}.recipient_types", f"unknown recipient type {kind!r}")
        draft.recipient_categories.append(
            RecipientCategory(
                recipients.id,
                recipients.description,
                frozenset(recipients.controllers),
                frozenset(recipients.purposes),
                frozenset(recipients.recipient_types),
                recipients.source,
            )
        )


def _check_category_scope(
    category_id: str,
    controllers: list[str],
    purposes: list[str],
    entry: str,
    known_controllers: set[str],
    draft: _Draft,
    fail: Fail,
) -> None:
    """A subject or recipient category: a unique lower_snake_case id, known controllers, and purposes of
    the register (or `any`, alone)."""
    if not _IDENTIFIER.match(category_id):
        raise fail(entry, "category ids are lower_snake_case")
    section = entry.split("[", 1)[0]
    taken = draft.subject_categories if section == "data_subject_categories" else draft.recipient_categories
    if any(known.id == category_id for known in taken):
        raise fail(entry, f"duplicate id {category_id!r}")
    for controller_id in controllers:
        if controller_id not in known_controllers:
            raise fail(f"{entry}.controllers", f"unknown controller {controller_id!r}")
    if purposes:
        _served_purposes(purposes, f"{entry}.purposes", draft, fail)


def _controller(doc: ControllerDef, serves: frozenset[str], serves_label: str, hosting: str) -> Controller:
    dpo = doc.dpo
    authority = doc.supervisory_authority
    notice = doc.notice
    return Controller(
        id=doc.id,
        name=doc.name,
        serves=serves,
        serves_label=serves_label,
        address=doc.address,
        email=doc.email,
        dpo=None if dpo is None else "; ".join(p for p in (dpo.title, dpo.postal, dpo.email) if p),
        supervisory_authority=(
            None if authority is None else ", ".join(p for p in (authority.name, authority.address) if p)
        ),
        legal_framework=doc.legal_framework,
        parent=doc.parent,
        hosting=hosting,
        notice=" ".join(
            part
            for part in (
                f"seed {notice.seed}",
                notice.reference or "",
                f"updated {notice.updated.isoformat()}",
                "(superseded by later versions)" if notice.superseded else "",
            )
            if part
        ),
        source=doc.source,
    )


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
# countries, purposes), rules (categories, purposes, zones), exceptions (rules and all of the above),
# controllers (zones, countries, purposes; added last, so it changed every version once).
POLICY_TABLE: tuple[PolicyFile[Any], ...] = (
    PolicyFile("taxonomy.yaml", TaxonomyFile, _compile_taxonomy, stage=2),
    PolicyFile("register.yaml", RegisterFile, _compile_register, stage=5),
    PolicyFile("subcontractors.yaml", SubcontractorsFile, _compile_subcontractors, stage=6),
    PolicyFile("zones.yaml", ZonesFile, _compile_zones, stage=3),
    PolicyFile("countries.yaml", CountriesFile, _compile_countries, stage=1),
    PolicyFile("rules.yaml", RulesFile, _compile_rules, stage=7),
    PolicyFile("exceptions.yaml", ExceptionsFile, _compile_exceptions, stage=8),
    PolicyFile("adequacy.yaml", AdequacyFile, _compile_adequacy, stage=4),
    PolicyFile("controllers.yaml", ControllersFile, _compile_controllers, stage=9),
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
        direct_identifiers=draft.direct_identifiers,
        flags=tuple(draft.flags),
        timeline=draft.timeline,
        controllers=tuple(draft.controllers),
        subject_categories=tuple(draft.subject_categories),
        recipient_categories=tuple(draft.recipient_categories),
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
