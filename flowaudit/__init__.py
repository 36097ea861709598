"""flowaudit: an event-driven, tamper-evident audit trail of personal-data flows."""

__version__ = "0.1.0"
