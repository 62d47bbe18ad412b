"""Observability: structured logs (and, later, metrics, traces, audit, alerts, reports)."""
