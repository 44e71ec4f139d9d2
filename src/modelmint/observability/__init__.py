"""Logs and metrics: JSON logs carrying the request id, Prometheus counters and histograms."""
