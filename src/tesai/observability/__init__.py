"""Structured logs, Prometheus metrics and the request-context middleware."""
