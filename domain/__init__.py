"""The pure domain, above the ground floor: the policy, the event kinds, validation, the decision core
and the Avro codec. No I/O beyond reading the policy and schema files at start-up, no metrics, no
settings: callers pass what each function needs.

Imports point down only: `fields` (InvalidEvent, field checks) ← `kinds` (the table of event
kinds) ← `policy` (a package: the compiled model, the registry of rule checks, the file schemas and
the loader) ← `events` (the event and its validation) ← `decision`, which compiles the rules through
`policy.checks`; `codec` needs only `kinds`. The sinks and the streams build on this; nothing here
imports them.
"""
