"""The policy: its files, their loading and validation, and the compiled model the decision core reads.

A policy directory holds nine YAML files (taxonomy, register, subcontractors, zones, countries, rules,
exceptions, adequacy, and controllers: the Art. 30 record's controllers, data subjects and recipients).
`load_policy` reads them, validates each against its schema, checks the references between files, and
compiles the result into a `Policy` of frozen lookup tables. Any problem raises
`PolicyError` naming the file and the entry at fault.

Modules, each importing only those before it:

    model    the compiled policy (frozen dataclasses), PolicyError, LegalBasis, EVENT_TYPES
    checks   the registry of rule checks: name -> params it needs -> compiler to predicates
    files    the files' pydantic schemas and the YAML reader (YAML 1.2 booleans, no duplicate keys)
    load     load_policy: the table of files, one compiler per file, the content-hash version

The rest of flowaudit imports the names below from `flowaudit.domain.policy`.
"""

from flowaudit.domain.policy.files import load_yaml
from flowaudit.domain.policy.load import POLICY_FILES, load_policy
from flowaudit.domain.policy.model import (
    EVENT_TYPES,
    Category,
    Controller,
    LegalBasis,
    Policy,
    PolicyError,
    PolicyException,
    Purpose,
    RecipientCategory,
    Rule,
    Subcontractor,
    SubjectCategory,
)

__all__ = [
    "EVENT_TYPES",
    "POLICY_FILES",
    "Category",
    "Controller",
    "LegalBasis",
    "Policy",
    "PolicyError",
    "PolicyException",
    "Purpose",
    "RecipientCategory",
    "Rule",
    "Subcontractor",
    "SubjectCategory",
    "load_policy",
    "load_yaml",
]
