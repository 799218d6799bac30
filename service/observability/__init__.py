"""Observability: metrics, logs, the request middleware (ids and access log), tracing."""
