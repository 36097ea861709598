"""The stream service, above the domain and the sinks.

Two floors in one folder:
- the pipeline steps, framework-independent, one module each: `messages` (what flows between them),
  `decide` (decode → validate → decide, one loop per batch), `route` (decision header, forwarding),
  `deadletter` (bad records and their limit), `measure` (a written batch's metrics), `consents` (the
  consent kind's batches: decode → validate → apply to the consent ledger → write), composed by
  `pipeline` (`BatchProcessor`: decide and write; `LocalPipeline`: the one-process runner);
- the runtime that drives them: `app` (the Faust agents, the consent ledger's table, web views; acks
  and commits), `pipe` (the
  declared messages between the two processes), `pipeline_process` (the worker's side of the second
  process: `PipelineProcess`, `RemotePipeline`), `pipeline_server` (the second process itself),
  `publish` (the gate's producer).

The CLI and the runtime wiring (`flowaudit.runtime`) stand above; nothing here imports them.
"""
