"""Classifying an event's fields: each field to its category, the list to a `Classification`.

Field lists are many (a device uploads any subset of its measures, in any order: 76,000 distinct
lists in 200,000 generated events), the categories few. So each field is mapped once to a bit of its
category (and a bit marking the taxonomy's direct identifiers), a list to the OR of its bits, and the
classification is remembered per mask — at most one per combination of categories seen. Fields the
taxonomy does not know set the `unclassified` bit; only then is the list walked again to name them.
Pure: depends only on the loaded policy.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

from flowaudit.domain.policy import Policy


@dataclass(frozen=True, slots=True)
class Classification:
    """The categories of a field list: as reported, and as the rules see them (fail closed)."""

    reported: tuple[str, ...]  # distinct, sorted; includes the unclassified category if any
    effective: frozenset[str]  # unclassified replaced by the category it is treated as
    unclassified_fields: tuple[str, ...]
    special: bool  # carries special-category data (seen through `effective`: fail closed)
    direct_identifiers: bool  # carries a field the taxonomy marks as a direct identifier


class _FieldBits(dict[str, int]):
    """field -> the bits of its category (and of being a direct identifier); an unknown field gets
    the unclassified bit, without being remembered (a typo must not grow the table)."""

    def __init__(self, bits: dict[str, int], unclassified_bit: int) -> None:
        super().__init__(bits)
        self.unclassified_bit = unclassified_bit

    def __missing__(self, field: str) -> int:
        return self.unclassified_bit


class FieldClassifier:
    """Classifies field lists against one policy's taxonomy (see the module's contract)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        categories = sorted(policy.categories)
        self._category_bit = {name: 1 << index for index, name in enumerate(categories)}
        self._unclassified_bit = 1 << len(categories)
        self._direct_bit = 1 << (len(categories) + 1)
        direct = policy.direct_identifiers
        bits = {
            field: self._category_bit[category] | (self._direct_bit if field in direct else 0)
            for field, category in policy.field_categories.items()
        }
        self._bits = _FieldBits(bits, self._unclassified_bit)
        self._by_mask: dict[int, Classification] = {}

    @property
    def unclassified_bit(self) -> int:
        return self._unclassified_bit

    @property
    def bit_of(self) -> Callable[[str], int]:
        """field -> its bits (what `mask` ORs together)."""
        return self._bits.__getitem__

    def classify(self, fields: tuple[str, ...]) -> Classification:
        mask = self.mask(fields)
        known = self.of_mask(mask)
        if mask & self._unclassified_bit:
            return replace(known, unclassified_fields=self.unclassified(fields))
        return known

    def mask(self, fields: tuple[str, ...]) -> int:
        """The OR of the fields' bits: their categories, unclassified, direct identifier."""
        return functools.reduce(operator.or_, map(self._bits.__getitem__, fields), 0)

    def unclassified(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """The fields the taxonomy does not know, in the order given."""
        mapping = self.policy.field_categories
        return tuple(field for field in fields if field not in mapping)

    def of_mask(self, mask: int) -> Classification:
        """The classification of a mask, without naming unclassified fields (`unclassified` does)."""
        known = self._by_mask.get(mask)
        if known is not None:
            return known
        policy = self.policy
        reported = {name for name, bit in self._category_bit.items() if mask & bit}
        effective = set(reported)
        if mask & self._unclassified_bit:
            reported.add(policy.unclassified_category)
            effective.add(policy.unclassified_treated_as)
        result = Classification(
            tuple(sorted(reported)),
            frozenset(effective),
            (),
            not policy.special_categories.isdisjoint(effective),
            bool(mask & self._direct_bit),
        )
        self._by_mask[mask] = result  # bounded: one per combination of categories
        return result
