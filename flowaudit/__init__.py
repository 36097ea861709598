"""flowaudit: an event-driven, tamper-evident audit trail of personal-data flows.

One import namespace; its parts live in top-level folders of the source tree (pyproject.toml maps
them), from the ground up:

    flowaudit.policy, .schemas   policy/, schemas/   data: policy YAML, Avro schemas, SQL
    flowaudit.common             common/             settings, metric declarations, tuning
    flowaudit.domain             domain/             policy model, event kinds, decision core, codec
    flowaudit.sinks              sinks/              audit rows, chain, store, writer, verify, reports
    flowaudit.streams            streams/            pipeline steps, Faust app, second process
    flowaudit                    flowaudit/          the CLI and the runtime wiring, on top

Every import points down this list.
"""

__version__ = "0.1.0"
