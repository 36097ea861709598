"""A seeded, reproducible generator of realistic events for the demo and the benchmarks.

Devices, recipients and user countries come from the product catalogue (`data/catalog.yaml`); fields,
purposes, subcontractors and storage places come from the loaded policy. A share of the traffic is
deliberately wrong (health data to the US, missing consent, a location mismatch, an unknown
subcontractor or purpose, unknown fields, marketing with health data, AI without pseudonymization) so
that every rule has something to block.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowaudit.domain.policy import Policy, load_yaml

CATALOG_PATH = Path(__file__).resolve().parent / "data" / "catalog.yaml"
_START = datetime(2025, 11, 1, tzinfo=UTC)


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, Any]:
    catalog: dict[str, Any] = load_yaml(path.read_bytes())
    return catalog


class EventGenerator:
    def __init__(self, policy: Policy, seed: int = 42, catalog: dict[str, Any] | None = None) -> None:
        self.policy = policy
        self.rng = random.Random(seed)
        self.catalog = catalog or load_catalog()
        self.users = [f"u-{self.rng.getrandbits(40):010x}" for _ in range(2000)]
        self.user_home = {user: self.rng.choice(self.catalog["user_countries"]) for user in self.users}
        self.by_category: dict[str, list[str]] = {}
        for field, category in sorted(policy.field_categories.items()):
            self.by_category.setdefault(category, []).append(field)
        self.outside = sorted(
            {"US", "PH", "CA", "GB", "CH", "IN", "JP", "BR"} & policy.countries - policy.protected_countries
        )
        self.inside = sorted(policy.protected_countries)
        self.seq = 0

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _time(self) -> str:
        self.seq += 1
        moment = _START + timedelta(seconds=self.seq * 7 + self.rng.randint(0, 6))
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.rng.randint(0, 999):03d}Z"

    def _fields_for(self, categories: frozenset[str] | set[str], count: int) -> list[str]:
        pool = [f for c in sorted(categories) for f in self.by_category.get(c, [])]
        return self.rng.sample(pool, min(count, len(pool))) if pool else []

    def _base(self, kind: str) -> dict[str, Any]:
        user = self.rng.choice(self.users)
        return {
            "event_id": self._uuid(),
            "event_type": kind,
            "occurred_at": self._time(),
            "user_id": user,
            "user_country": self.user_home[user],
        }

    def device_sync(self) -> dict[str, Any]:
        rng = self.rng
        event = self._base("device_sync")
        device = rng.choice(self.catalog["devices"])
        fields = rng.sample(device["fields"], rng.randint(1, len(device["fields"])))
        fields += rng.sample(self.catalog["sync_technical_fields"], rng.randint(0, 2))
        roll = rng.random()
        if roll < 0.03:
            destination = rng.choice(self.outside)  # a misrouted sync to a non-EEA region
        elif roll < 0.04:
            fields.append(rng.choice(["raw_ppg_signal", "stress_index", "menstrual_cycle"]))  # unknown fields
            destination = "FR"
        else:
            destination = "FR"
        event.update(
            fields=fields,
            destination_country=destination,
            purpose=rng.choice(["health_data_display"] * 8 + ["hosting", "product_improvement"]),
            consent_id=None,
            device_model=device["model"],
            device_id=":".join(f"{rng.randint(0, 255):02x}" for _ in range(6)),
        )
        return event

    def sharing(self) -> dict[str, Any]:
        rng = self.rng
        event = self._base("sharing")
        recipient_type = rng.choice(
            ["third_party_app"] * 5
            + ["other_user", "healthcare_professional"] * 2
            + ["research_program"] * 2
            + ["social_network"]
        )
        recipient = rng.choice(self.catalog["recipients"][recipient_type])
        destination = recipient["country"] or event["user_country"] or "FR"
        purpose = "research_program" if recipient_type == "research_program" else "third_party_sharing"
        categories = {"health", "activity"} if rng.random() < 0.7 else {"activity", "location"}
        fields = self._fields_for(categories, rng.randint(1, 4))
        roll = rng.random()
        if roll < 0.02:
            purpose = "ai_personalization"
        elif roll < 0.03:
            purpose = "wellness_coaching"  # not in the register
        event.update(
            fields=fields,
            destination_country=destination,
            purpose=purpose,
            consent_id=None if rng.random() < 0.05 else f"consent-{rng.getrandbits(32):08x}",
            recipient_type=recipient_type,
            recipient=recipient["name"],
        )
        return event

    def subcontractor_transfer(self) -> dict[str, Any]:
        rng = self.rng
        event = self._base("subcontractor_transfer")
        policy = self.policy
        sub = rng.choice(policy.subcontractor_list)
        purpose_id = rng.choice(sub.purposes) if sub.purposes else "hosting"
        purpose = policy.purposes[purpose_id]
        categories = set(purpose.data_categories)
        if "health" in categories and rng.random() < 0.5:
            categories.discard("health")
        fields = self._fields_for(categories, rng.randint(1, 5))
        destination = rng.choice(sorted(sub.storage_countries))
        name = sub.name
        roll = rng.random()
        if roll < 0.03:
            destination = rng.choice(
                self.outside if destination in policy.protected_countries else self.inside
            )
        elif roll < 0.05:
            name = rng.choice(["Acme Analytics", "CloudVault Ltd", "DataBridge Inc"])
            destination = rng.choice(self.outside)
        elif roll < 0.06:
            name = name.upper()  # case-insensitive match must hold
        elif roll < 0.08:
            marketers = [s for s in policy.subcontractor_list if "marketing" in s.purposes] or [sub]
            sub = rng.choice(marketers)
            name, purpose_id, purpose = sub.name, "marketing", policy.purposes["marketing"]
            destination = rng.choice(sorted(sub.storage_countries))
            fields = ["email", rng.choice(self.by_category["health"])]  # segmenting on health data
        bulk = rng.random() < 0.3
        if bulk:
            event["user_id"] = None
            event["user_country"] = None
        needs_consent = purpose.legal_basis == "consent"
        event.update(
            fields=fields,
            destination_country=destination,
            purpose=purpose_id,
            consent_id=(
                f"consent-{rng.getrandbits(32):08x}" if needs_consent and rng.random() < 0.95 else None
            ),
            subcontractor=name,
            record_count=rng.randint(100, 50_000) if bulk else 1,
            encrypted=rng.random() < 0.9,
            pseudonymized=rng.random() < 0.4,
        )
        return event

    def next_event(self) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.6:
            return self.device_sync()
        if roll < 0.85:
            return self.sharing()
        return self.subcontractor_transfer()

    def events(self, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            yield self.next_event()
