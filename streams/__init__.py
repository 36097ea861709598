"""The stream service, above the domain and the sinks.

Two floors in one folder:
- the pipeline steps, framework-independent (`pipeline`): decode → validate → decide → route → write;
- the runtime that drives them (`app`: the Faust agents and web views; `pipeline_process`: the second
  process; `publish`: the gate's producer).

The CLI and the runtime wiring (`flowaudit.runtime`) stand above; nothing here imports them.
"""
