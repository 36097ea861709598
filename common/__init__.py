"""The ground floor: what every other part of flowaudit may import, and which imports none of them.

- `settings`: the one typed settings object, read from the environment once (secrets masked).
- `metrics`: every Prometheus metric, declared once with its meaning and closed label sets.
- `tuning`: process tuning (GC thresholds, allocator, GIL switch interval) for long-running paths.

Nothing here imports the domain, the sinks or the streams; it may read the shipped data folders.
"""
