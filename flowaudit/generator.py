"""A seeded, reproducible generator of realistic events for the demo and the benchmarks.

Devices, recipients, user countries, the purposes of syncs and sharings and the demo's deliberate
mistakes (unknown processors, purposes and fields, misrouted regions) come from the product catalogue
(`data/catalog.yaml`); fields, categories, purposes, subcontractors (the purposes each serves, its
storage place, service area and encryption) and the parameters of the rules come from the loaded
policy. Nothing here names a country, field, purpose or subcontractor.

Most traffic is correct: each subcontractor receives data for the purposes it serves, of subjects
who live in its service area, where it stores, encrypted where it must be, with the categories the
purpose declares (health only where the purpose has an Art. 9(2) condition, credentials only for the
purposes the credentials rule allows), a consent reference where the legal basis, the kind or the
rule on health data for support asks for one, pseudonymized (without direct identifiers) where a
rule requires it. Some of it is blocked all the same, as the policy says: a user shares health data
with an app outside the EEA.

A share of the events (`FAULT_RATE`) is deliberately wrong, one mistake per event, taken in turn from
a shuffled cycle of `FAULTS` (one per rule that can fire on the stream, and per advisory flag), so
every rule fires and every flag is raised within the first few hundred events, and in any run of a
few thousand. Bulk transfers (`user_id` null) mostly name their `subjects`; one fault leaves them out.

Consent events (contract v2 §1, §6) make about `CONSENT_SHARE` of the records. A flow that needs a
consent cites its user's grant for its purpose; when the user has none in force, a grant is emitted
just before the flow, at an earlier `occurred_at` (the flow takes the next moment). Once consents
reach their share, such flows come mostly from users who already hold a grant for the purpose, so
grants are reused. Some grants are withdrawn (`WITHDRAWAL_RATE`); four faults concern consents: a flow
after its consent was withdrawn, a flow citing another user's consent, one citing a consent given for
another purpose (each `consent-not-valid` by the ledger), and one citing a consent id never granted
(flag `consent-unverified`). A bulk transfer (no `user_id`) that needs one cites an id never granted.

One ordered stream, in an order in which `occurred_at` makes sense: `next_record()` / `records(count)`
give every record (flows and consents, canonical JSON objects, a consent's `event_type` being
`consent`); `next_event()` / `events(count)` give the flows of that same stream and leave the consents
out (the consumers that decide flows only: benchmarks, store tests; no ledger, so every cited
consent is unverified there). Records built by calling a builder (`sharing()`, a fault) directly
leave the consents they need queued, to come out of `next_record()` first.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowaudit.domain.policy import Policy, Rule, Subcontractor, load_yaml

CATALOG_PATH = Path(__file__).resolve().parent / "data" / "catalog.yaml"
_START = datetime(2025, 11, 1, tzinfo=UTC)

# Share of the events that carry one deliberate mistake (a fault of `FAULTS`).
FAULT_RATE = 0.05
# Share of the subcontractor transfers (to a processor without a service area, for a purpose not
# based on consent) that are bulk transfers: `user_id` null, many records.
BULK_RATE = 0.3
# Share of the records that are consent events (grants and withdrawals), about.
CONSENT_SHARE = 0.1
# Chance, per record, that a grant in force is withdrawn (a record of its own).
WITHDRAWAL_RATE = 0.008
CONSENT = "consent"  # the event_type of a consent record (kinds.CONSENT_KIND; no domain import needed)

Event = dict[str, Any]
Pair = tuple[Subcontractor, str]  # a subcontractor and a purpose it serves


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, Any]:
    catalog: dict[str, Any] = load_yaml(path.read_bytes())
    return catalog


def _weighted(weights: dict[str, int]) -> list[str]:
    """A list to `rng.choice` from, each key repeated by its weight (in the catalogue's order)."""
    return [key for key, weight in weights.items() for _ in range(int(weight))]


class EventGenerator:
    def __init__(self, policy: Policy, seed: int = 42, catalog: dict[str, Any] | None = None) -> None:
        self.policy = policy
        self.rng = random.Random(seed)
        self.catalog = catalog or load_catalog()
        self.seq = 0
        self._users(self.catalog)
        self._vocabulary(policy)
        self._obligations(policy)
        self._registry(policy)
        self._sharing_mix(self.catalog)
        self._faults: list[Callable[[], Event | None]] = []
        self._consent_state(self.catalog)

    def _consent_state(self, catalog: dict[str, Any]) -> None:
        """The grants in force, as the consent ledger will hold them, and the records still to emit."""
        self.notices: list[str] = list(catalog["consent_notices"])
        self.grants: dict[tuple[str, str], str] = {}  # (user, purpose) -> consent id, in force
        self.holders: dict[str, list[str]] = {}  # purpose -> users holding a grant in force for it
        self.consent_purposes = sorted(
            p for p, purpose in self.policy.purposes.items() if purpose.legal_basis in self.consent_bases
        )
        self.made = {"flows": 0, "consents": 0}
        self._pending: deque[Event] = deque()

    # --- set-up: what the policy and the catalogue give -------------------------------------------------

    def _users(self, catalog: dict[str, Any]) -> None:
        self.users = [f"u-{self.rng.getrandbits(40):010x}" for _ in range(2000)]
        self.user_home = {user: self.rng.choice(catalog["user_countries"]) for user in self.users}
        self.users_by_country: dict[str, list[str]] = {}
        for user in self.users:
            self.users_by_country.setdefault(self.user_home[user], []).append(user)

    def _vocabulary(self, policy: Policy) -> None:
        self.by_category: dict[str, list[str]] = {}
        for field, category in sorted(policy.field_categories.items()):
            self.by_category.setdefault(category, []).append(field)
        self.direct_identifiers = sorted(policy.direct_identifiers)
        self._pools: dict[tuple[frozenset[str], bool], list[str]] = {}
        self.inside = sorted(policy.protected_countries)
        self.outside = [
            c for c in self.catalog["outside_countries"] if c in policy.countries - policy.protected_countries
        ]
        self.eea_users = [u for u in self.users if self.user_home[u] in policy.protected_countries]

    def _obligations(self, policy: Policy) -> None:
        """What the rules ask of a correct event, read from their parameters."""
        self.rules = {rule.id: rule for rule in policy.rules}
        by_check: dict[str, list[Rule]] = {}
        for rule in policy.rules:
            by_check.setdefault(rule.check, []).append(rule)
        self.pseudonymize_purposes = frozenset(
            p for rule in by_check.get("requires_pseudonymization", []) for p in rule.purposes
        )
        consent_rules = by_check.get("consent_missing", [])
        self.consent_bases = frozenset(b for rule in consent_rules for b in rule.legal_bases)
        self.consent_kinds = frozenset(k for rule in consent_rules for k in rule.event_types)
        self.ticket_consent = [
            (r.purposes, r.categories) for r in by_check.get("categories_without_consent", [])
        ]
        self.platform_only = [
            (r.categories, r.unless_purposes) for r in by_check.get("categories_leave_platform", [])
        ]

    def _registry(self, policy: Policy) -> None:
        self.pairs: list[Pair] = []
        for sub in policy.subcontractor_list:
            purposes = sorted(policy.purposes) if sub.serves_any else sub.purposes
            self.pairs += [(sub, p) for p in purposes if p in policy.purposes]
        self.storage = {sub.name: sorted(sub.storage_countries) for sub in policy.subcontractor_list}
        self.area_users = {
            sub.name: [u for u in self.users if self.user_home[u] in sub.service_area]
            for sub in policy.subcontractor_list
            if sub.service_area is not None
        }
        controllers = [sub for sub in policy.subcontractor_list if sub.controller]
        self.platform = self.storage[controllers[0].name][0] if controllers else self.inside[0]

    def _sharing_mix(self, catalog: dict[str, Any]) -> None:
        self.recipient_types = _weighted(catalog["recipient_weights"])
        self.sharing_purposes = {t: _weighted(w) for t, w in catalog["sharing_purposes"].items()}
        self.sharing_categories = [
            frozenset(mix["categories"])
            for mix in catalog["sharing_categories"]
            for _ in range(int(mix["weight"]))
        ]
        self.sync_purposes = _weighted(catalog["sync_purposes"])

    # --- building blocks --------------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _time(self) -> str:
        self.seq += 1
        moment = _START + timedelta(seconds=self.seq * 7 + self.rng.randint(0, 6))
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.rng.randint(0, 999):03d}Z"

    def _consent_id(self) -> str:
        # 64 bits: an id "never granted" must not collide with one granted (the ledger would hold it)
        return f"consent-{self.rng.getrandbits(64):016x}"

    def _pool(self, categories: frozenset[str], pseudonymous: bool) -> list[str]:
        key = (categories, pseudonymous)
        pool = self._pools.get(key)
        if pool is None:
            pool = [f for c in sorted(categories) for f in self.by_category.get(c, [])]
            if pseudonymous:
                pool = [f for f in pool if f not in self.policy.direct_identifiers]
            self._pools[key] = pool
        return pool

    def _fields_for(self, categories: frozenset[str], count: int, pseudonymous: bool = False) -> list[str]:
        """`count` distinct fields of the categories (fewer if there are fewer; never none: any
        category will do when these have no field)."""
        pool = self._pool(categories, pseudonymous) or self._pool(frozenset(self.by_category), pseudonymous)
        return self.rng.sample(pool, min(count, len(pool)))

    def _allowed_categories(self, purpose_id: str, leaves_platform: bool) -> frozenset[str]:
        """The categories a correct event may carry for the purpose: what the register declares, less
        the categories that may not leave the platform for it."""
        categories = set(self.policy.purposes[purpose_id].data_categories)
        if leaves_platform:
            for restricted, unless in self.platform_only:
                if purpose_id not in unless:
                    categories -= restricted
        return frozenset(categories)

    def _needs_consent(self, kind: str, purpose_id: str, fields: Sequence[str]) -> bool:
        purpose = self.policy.purposes.get(purpose_id)
        if kind in self.consent_kinds or (purpose is not None and purpose.legal_basis in self.consent_bases):
            return True
        mapping = self.policy.field_categories
        return any(
            purpose_id in purposes and any(mapping.get(f, "") in categories for f in fields)
            for purposes, categories in self.ticket_consent
        )

    def _settle_consent(self, event: Event) -> Event:
        needed = self._needs_consent(event["event_type"], event["purpose"], event["fields"])
        event["consent_id"] = self._cite(event) if needed else None
        return event

    # --- consents: grants, withdrawals, and what flows cite ---------------------------------------------

    def _consent(self, user: str, consent_id: str, purpose: str, action: str, before: Event | None) -> None:
        """Queue a consent record. `before`: the flow it must precede; the record takes the flow's
        moment and the flow the next one, so `occurred_at` grows along the stream."""
        record: Event = {
            "event_id": self._uuid(),
            "event_type": CONSENT,
            "occurred_at": before["occurred_at"] if before is not None else self._time(),
            "user_id": user,
            "consent_id": consent_id,
            "purpose": purpose,
            "action": action,
        }
        if action == "granted":
            record["notice_version"] = self.rng.choice(self.notices)  # the notice the user was shown
        if before is not None:
            before["occurred_at"] = self._time()
        self._pending.append(record)
        self.made["consents"] += 1

    def _grant(self, user: str, purpose: str, before: Event) -> str:
        consent_id = self._consent_id()
        self._consent(user, consent_id, purpose, "granted", before)
        self.grants[(user, purpose)] = consent_id
        self.holders.setdefault(purpose, []).append(user)
        return consent_id

    def _withdraw(self, user: str, purpose: str, before: Event | None = None) -> str:
        consent_id = self.grants.pop((user, purpose))
        self.holders[purpose].remove(user)
        self._consent(user, consent_id, purpose, "withdrawn", before)
        return consent_id

    def _cite(self, event: Event) -> str:
        """The consent the flow relies on: its user's grant in force for its purpose, granted just
        before the flow if there is none; an id never granted when there is no user (a bulk transfer)
        or no register purpose to grant it for."""
        user, purpose = event["user_id"], event["purpose"]
        if user is None or purpose not in self.policy.purposes:
            return self._consent_id()
        return self.grants.get((user, purpose)) or self._grant(user, purpose, event)

    def _returning(self, purpose_id: str, among: Sequence[str] | None = None) -> str | None:
        """Once consents have their share, a user who holds a grant for the purpose (of `among`, if
        given), so the grant is reused rather than a new one made; else None (any user)."""
        if self.made["consents"] < CONSENT_SHARE * (self.made["consents"] + self.made["flows"]):
            return None
        holders = self.holders.get(purpose_id, [])
        if among is not None:
            allowed = set(among)
            holders = [user for user in holders if user in allowed]
        return self.rng.choice(holders) if holders else None

    def _base(self, kind: str, user: str | None = None) -> Event:
        user = user or self.rng.choice(self.users)
        return {
            "event_id": self._uuid(),
            "event_type": kind,
            "occurred_at": self._time(),
            "user_id": user,
            "user_country": self.user_home[user],
        }

    # --- correct traffic --------------------------------------------------------------------------------

    def device_sync(self, user: str | None = None) -> Event:
        rng = self.rng
        event = self._base("device_sync", user)
        device = rng.choice(self.catalog["devices"])
        purpose_id = rng.choice(self.sync_purposes)
        declared = self._allowed_categories(purpose_id, leaves_platform=False)
        mapping = self.policy.field_categories
        measured = [f for f in device["fields"] if mapping.get(f) in declared]
        fields = rng.sample(measured, rng.randint(1, len(measured))) if measured else []
        fields += rng.sample(self.catalog["sync_technical_fields"], rng.randint(0 if fields else 1, 2))
        if rng.random() < 0.01:  # a firmware sends a measurement the taxonomy does not know yet
            fields.append(rng.choice(self.catalog["unknown_fields"]))
        event.update(
            fields=fields,
            destination_country=self.platform,
            purpose=purpose_id,
            consent_id=None,
            device_model=device["model"],
            device_id=":".join(f"{rng.randint(0, 255):02x}" for _ in range(6)),
        )
        return self._settle_consent(event)

    def sharing(self, purpose_id: str | None = None, recipient_type: str | None = None) -> Event:
        rng = self.rng
        recipient_type = recipient_type or rng.choice(self.recipient_types)
        recipient = rng.choice(self.catalog["recipients"][recipient_type])
        purpose_id = purpose_id or rng.choice(self.sharing_purposes[recipient_type])
        event = self._base("sharing", self._returning(purpose_id))  # a sharing always needs a consent
        pseudonymous = purpose_id in self.pseudonymize_purposes
        allowed = self._allowed_categories(purpose_id, leaves_platform=True)
        categories = rng.choice(self.sharing_categories) & allowed or allowed
        event.update(
            fields=self._fields_for(categories, rng.randint(1, 4), pseudonymous),
            destination_country=recipient["country"] or event["user_country"] or self.platform,
            purpose=purpose_id,
            consent_id=None,
            recipient_type=recipient_type,
            recipient=recipient["name"],
        )
        if pseudonymous:
            event["pseudonymized"] = True
        return self._settle_consent(event)

    def _transfer(self, sub: Subcontractor, purpose_id: str, user: str | None = None) -> Event:
        """A correct transfer of data to `sub` for `purpose_id` (a purpose it serves)."""
        rng = self.rng
        purpose = self.policy.purposes[purpose_id]
        area = self.area_users.get(sub.name)
        if user is None and purpose.legal_basis in self.consent_bases:
            user = self._returning(purpose_id, area)
        if user is None and area:
            user = rng.choice(area)
        event = self._base("subcontractor_transfer", user)
        leaves = not sub.controller
        pseudonymous = leaves and purpose_id in self.pseudonymize_purposes
        categories = self._allowed_categories(purpose_id, leaves)
        special = self.policy.special_categories
        if not categories.isdisjoint(special) and rng.random() < 0.5:
            categories = categories - special or categories  # not every ticket or order is about health
        bulk = area is None and purpose.legal_basis not in self.consent_bases and rng.random() < BULK_RATE
        record_count = 1
        if bulk:
            subjects = rng.sample(self.users, rng.randint(2, 20))
            event.update(user_id=None, user_country=None, subjects=subjects)
            record_count = len(subjects) * rng.randint(1, 40)
        event.update(
            fields=self._fields_for(categories, rng.randint(1, 5), pseudonymous),
            destination_country=rng.choice(self.storage[sub.name]),
            purpose=purpose_id,
            consent_id=None,
            subcontractor=sub.name if rng.random() > 0.01 else sub.name.upper(),  # matched in any case
            record_count=record_count,
            encrypted=sub.encryption_required or rng.random() < 0.9,
            pseudonymized=pseudonymous,
        )
        if "subjects" in event:  # keep the contract's key order: the kind's own fields last
            event["subjects"] = event.pop("subjects")
        return self._settle_consent(event)

    def subcontractor_transfer(self) -> Event:
        sub, purpose_id = self.rng.choice(self.pairs)
        return self._transfer(sub, purpose_id)

    def _next_flow(self) -> Event:
        roll = self.rng.random()
        if roll < FAULT_RATE:
            return self.fault()
        if roll < 0.6:
            return self.device_sync()
        if roll < 0.85:
            return self.sharing()
        return self.subcontractor_transfer()

    def next_record(self) -> Event:
        """The next record of the stream: a flow, or a consent event (`event_type` "consent")."""
        if not self._pending:
            if self.grants and self.rng.random() < WITHDRAWAL_RATE:
                self._withdraw(*self.rng.choice(list(self.grants)))
            else:
                flow = self._next_flow()  # queues the grants it needs first
                self._pending.append(flow)
                self.made["flows"] += 1
        return self._pending.popleft()

    def records(self, count: int) -> Iterator[Event]:
        """`count` records of the stream, flows and consents, in order."""
        for _ in range(count):
            yield self.next_record()

    def next_event(self) -> Event:
        """The next flow of the stream (the consent records before it are dropped)."""
        while True:
            record = self.next_record()
            if record["event_type"] != CONSENT:
                return record

    def events(self, count: int) -> Iterator[Event]:
        """`count` flows of the stream, without its consent records."""
        for _ in range(count):
            yield self.next_event()

    # --- the deliberate mistakes ------------------------------------------------------------------------

    def fault(self) -> Event:
        """The next deliberate mistake of the shuffled cycle (one not applicable to the policy is skipped)."""
        for _ in range(2 * len(FAULTS)):
            if not self._faults:
                self._faults = [getattr(self, name) for name in FAULTS]
                self.rng.shuffle(self._faults)
            event = self._faults.pop()()
            if event is not None:
                return event
        return self.subcontractor_transfer()

    def _pairs_where(self, keep: Callable[[Subcontractor, str], bool]) -> Pair | None:
        pairs = [pair for pair in self.pairs if keep(*pair)]
        return self.rng.choice(pairs) if pairs else None

    def _rule(self, rule_id: str) -> Rule | None:
        return self.rules.get(rule_id)

    def _field_of(self, categories: frozenset[str]) -> str:
        return self.rng.choice(self._pool(categories, False))

    def misrouted_sync(self) -> Event | None:
        """An EEA resident's device sync stored outside the EEA (health leaves it; no safeguard where
        the region has no adequacy decision)."""
        if not self.outside or not self.eea_users:
            return None
        event = self.device_sync(self.rng.choice(self.eea_users))
        event["destination_country"] = self.rng.choice(self.outside)
        return event

    def unknown_processor(self) -> Event | None:
        """Data sent to a processor that is not in the registry, outside the EEA."""
        find = self.policy.find_subcontractor
        unknown = [p for p in self.catalog["unknown_processors"] if find(p["name"]) is None]
        if not unknown or not self.eea_users:
            return None
        sub, purpose_id = self.rng.choice(self.pairs)
        event = self._transfer(sub, purpose_id, self.rng.choice(self.eea_users))
        processor = self.rng.choice(unknown)
        event.update(subcontractor=processor["name"], destination_country=processor["country"])
        return event

    def location_mismatch(self) -> Event | None:
        """A registered processor receiving data outside its storage place."""
        sub, purpose_id = self.rng.choice(self.pairs)
        event = self._transfer(sub, purpose_id)
        elsewhere = [c for c in self.outside + self.inside if c not in sub.storage_countries]
        event["destination_country"] = self.rng.choice(elsewhere)
        return event

    def unknown_purpose(self) -> Event | None:
        """A sharing for a purpose the register does not know."""
        event = self.sharing()
        event["purpose"] = self.rng.choice(self.catalog["unknown_purposes"])
        return event

    def sharing_without_consent(self) -> Event | None:
        """A sharing with no consent reference."""
        event = self.sharing()
        event["consent_id"] = None
        return event

    def _transfer_for_rule(self, rule_id: str) -> Event | None:
        """A transfer for one of the rule's purposes, carrying a field of one of its categories."""
        rule = self._rule(rule_id)
        if rule is None:
            return None
        purposes = rule.purposes
        pair = self._pairs_where(lambda sub, purpose: purpose in purposes)
        if pair is None:
            return None
        event = self._transfer(*pair)
        event["fields"].append(self._field_of(rule.categories))
        return event

    def health_for_marketing(self) -> Event | None:
        """Marketing segmented on health data."""
        return self._transfer_for_rule("health-data-for-marketing")

    def _unpseudonymized_sharing(self, rule_id: str) -> Event | None:
        rule = self._rule(rule_id)
        types = [t for t, purposes in self.sharing_purposes.items() if rule and rule.purposes & set(purposes)]
        if rule is None or not types:
            return None
        recipient_type = self.rng.choice(types)
        purpose_id = self.rng.choice(sorted(rule.purposes & set(self.sharing_purposes[recipient_type])))
        event = self.sharing(purpose_id, recipient_type)
        event.pop("pseudonymized", None)
        return event

    def ai_not_pseudonymized(self) -> Event | None:
        """Data for AI personalization shared without being pseudonymized."""
        return self._unpseudonymized_sharing("ai-requires-pseudonymization")

    def research_not_pseudonymized(self) -> Event | None:
        """Data for a research program shared without being pseudonymized."""
        return self._unpseudonymized_sharing("pseudonymization-required")

    def identifiers_in_pseudonymized(self) -> Event | None:
        """A transfer marked pseudonymized that still carries a direct identifier."""
        if not self.direct_identifiers:
            return None
        event = self.subcontractor_transfer()
        event["pseudonymized"] = True
        event["fields"].append(self.rng.choice(self.direct_identifiers))
        return event

    def health_without_condition(self) -> Event | None:
        """Health data for a purpose with no Art. 9(2) condition (a delivery note with a weight)."""
        rule = self._rule("special-category-without-condition")
        register = self.policy.purposes
        pair = self._pairs_where(lambda sub, purpose: register[purpose].special_category_condition is None)
        if rule is None or pair is None:
            return None
        event = self._transfer(*pair)
        event["fields"].append(self._field_of(rule.categories))
        return self._settle_consent(event)

    def support_health_without_consent(self) -> Event | None:
        """Health data in a support ticket without the user's consent for it."""
        event = self._transfer_for_rule("health-data-to-support-without-consent")
        if event is not None:
            event["consent_id"] = None
        return event

    def purpose_mismatch(self) -> Event | None:
        """A processor receiving data for a purpose it does not serve."""
        pair = self._pairs_where(lambda sub, purpose: not sub.serves_any)
        if pair is None:
            return None
        event = self._transfer(*pair)
        others = sorted(set(self.policy.purposes) - set(pair[0].purposes))
        event["purpose"] = self.rng.choice(others)
        return self._settle_consent(event)

    def outside_service_area(self) -> Event | None:
        """A processor with a service area receiving data of a subject living outside it."""
        subs = [s for s in self.policy.subcontractor_list if s.service_area is not None and s.purposes]
        if not subs:
            return None
        sub = self.rng.choice(subs)
        assert sub.service_area is not None
        area = sub.service_area
        strangers = [u for c, users in sorted(self.users_by_country.items()) if c not in area for u in users]
        user = self.rng.choice(strangers) if strangers else None
        event = self._transfer(sub, self.rng.choice(sub.purposes), user)
        if not strangers:
            event["user_country"] = None  # unknown residence: outside, fail closed
        return event

    def unencrypted(self) -> Event | None:
        """Data sent unencrypted to a processor that must receive it encrypted."""
        pair = self._pairs_where(lambda sub, purpose: sub.encryption_required)
        if pair is None:
            return None
        event = self._transfer(*pair)
        event["encrypted"] = False
        return event

    def credentials_leave(self) -> Event | None:
        """Account credentials sent to a processor (a password in a support e-mail)."""
        rule = self._rule("credentials-leave-platform")
        if rule is None:
            return None
        unless = rule.unless_purposes
        pair = self._pairs_where(lambda sub, purpose: not sub.controller and purpose not in unless)
        if pair is None:
            return None
        event = self._transfer(*pair)
        event["fields"].append(self._field_of(rule.categories))
        return event

    def undeclared_category(self) -> Event | None:
        """A transfer carrying a category its purpose does not declare (flag only: data minimisation)."""
        blocked = self.policy.special_categories | {c for cats, _ in self.platform_only for c in cats}
        spare = {
            p: frozenset(self.by_category) - purpose.data_categories - blocked
            for p, purpose in self.policy.purposes.items()
        }
        pair = self._pairs_where(lambda sub, purpose: bool(spare[purpose]))
        if pair is None:
            return None
        event = self._transfer(*pair)
        event["fields"].append(self._field_of(spare[pair[1]]))
        return event

    def unattributed_bulk(self) -> Event | None:
        """A bulk transfer of personal data that names none of its subjects (flag only)."""
        exempt = self._flag_exempt("unattributed-bulk-transfer")
        register, consent_bases = self.policy.purposes, self.consent_bases
        pair = self._pairs_where(
            lambda sub, purpose: (
                sub.service_area is None and register[purpose].legal_basis not in consent_bases
            )
        )
        if pair is None:
            return None
        event = self._transfer(*pair)
        personal = frozenset(self.by_category) - exempt - self.policy.special_categories
        event.update(user_id=None, user_country=None, record_count=self.rng.randint(100, 50_000))
        event.pop("subjects", None)
        event["fields"].append(self._field_of(personal & self._allowed_categories(pair[1], True) or personal))
        return self._settle_consent(event)

    def withdrawn_consent(self) -> Event | None:
        """A sharing after its user withdrew the consent it cites (consent-not-valid by the ledger)."""
        event = self.sharing()
        self._withdraw(event["user_id"], event["purpose"], before=event)
        return event

    def another_users_consent(self) -> Event | None:
        """A sharing citing a consent another user gave for its purpose (consent-not-valid)."""
        event = self.sharing()
        user, purpose = event["user_id"], event["purpose"]
        others = [other for other in self.holders.get(purpose, []) if other != user]
        other = self.rng.choice(others) if others else self.rng.choice([u for u in self.users if u != user])
        event["consent_id"] = self.grants.get((other, purpose)) or self._grant(other, purpose, event)
        return event

    def consent_for_another_purpose(self) -> Event | None:
        """A sharing citing a consent its user gave for another purpose (consent-not-valid)."""
        event = self.sharing()
        user, purpose = event["user_id"], event["purpose"]
        given = [p for (holder, p) in self.grants if holder == user and p != purpose]
        other = given[0] if given else self.rng.choice([p for p in self.consent_purposes if p != purpose])
        event["consent_id"] = self.grants.get((user, other)) or self._grant(user, other, event)
        return event

    def unrecorded_consent(self) -> Event | None:
        """A sharing citing a consent id that was never granted (flag consent-unverified)."""
        event = self.sharing()
        event["consent_id"] = self._consent_id()
        return event

    def _flag_exempt(self, flag_id: str) -> frozenset[str]:
        """The categories a flag's check exempts (`except_categories`)."""
        for flag in self.policy.flags:
            if flag.id == flag_id:
                return flag.except_categories
        return frozenset()


# The deliberate mistakes, by method name: one per rule that can fire on the stream and per flag, and
# one per way a cited consent is wrong. The three that make `consent-not-valid` fire need the consent
# ledger to show (`flowaudit evaluate` over `records()`; the stream has none yet); without one, every
# cited consent is `consent-unverified`, and with one, only `unrecorded_consent`'s.
FAULTS = (
    "misrouted_sync",
    "unknown_processor",
    "location_mismatch",
    "unknown_purpose",
    "sharing_without_consent",
    "health_for_marketing",
    "ai_not_pseudonymized",
    "research_not_pseudonymized",
    "identifiers_in_pseudonymized",
    "health_without_condition",
    "support_health_without_consent",
    "purpose_mismatch",
    "outside_service_area",
    "unencrypted",
    "credentials_leave",
    "undeclared_category",
    "unattributed_bulk",
    "withdrawn_consent",
    "another_users_consent",
    "consent_for_another_purpose",
    "unrecorded_consent",
)
