"""Prometheus metrics of the gateway."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "BILLING_ALERTS",
    "BILLING_REFUSALS",
    "BILLING_SHORTFALLS",
    "HTTP_REQUESTS",
    "MODEL_LATENCY",
    "MODEL_REQUESTS",
    "RATE_LIMIT_FALLBACKS",
    "TOKENS",
]

HTTP_REQUESTS = Counter(
    "modelmint_http_requests_total", "HTTP requests by route and status", ["route", "status"]
)
MODEL_REQUESTS = Counter(
    "modelmint_model_requests_total",
    "Requests that reached a model, by model, endpoint and status",
    ["model", "endpoint", "status"],
)
MODEL_LATENCY = Histogram(
    "modelmint_model_request_seconds",
    "Time from admission to the last byte, by model and endpoint",
    ["model", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = Counter(
    "modelmint_tokens_total", "Tokens metered, by model and direction", ["model", "direction"]
)
RATE_LIMIT_FALLBACKS = Counter(
    "modelmint_ratelimit_redis_fallbacks_total",
    "Admissions decided by this process alone because Redis could not be reached",
)
BILLING_REFUSALS = Counter(
    "modelmint_billing_refusals_total",
    "Requests refused at admission for billing reasons, before any model work",
    ["reason"],  # credit, budget, allowance, unpriced
)
BILLING_ALERTS = Counter(
    "modelmint_billing_alerts_total", "Billing alerts raised, by kind", ["kind"]
)
BILLING_SHORTFALLS = Counter(
    "modelmint_billing_shortfalls_total",
    "Charges a wallet could not fully pay (each also logged at ERROR; should stay 0)",
)
