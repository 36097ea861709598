"""The pure domain, above the ground floor: the policy, the event kinds, validation, the decision core
and the Avro codec. No I/O beyond reading the policy and schema files at start-up, no metrics, no
settings: callers pass what each function needs.

Imports point down only: `checks` (InvalidEvent, field checks) ← `kinds` (the table of event kinds)
← `policy` (model and loader) ← `events` (the event and its validation) ← `decision`; `codec` needs
only `kinds`. The sinks and the streams build on this; nothing here imports them.
"""
