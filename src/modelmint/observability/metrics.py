"""Prometheus metrics of the gateway."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AUTH_FAILURES",
    "BILLING_ALERTS",
    "BILLING_REFUSALS",
    "BILLING_SHORTFALLS",
    "CREDIT_LEASE_ADMISSIONS",
    "HTTP_REQUESTS",
    "MODEL_LATENCY",
    "MODEL_REQUESTS",
    "RATE_LIMIT_FALLBACKS",
    "TOKENS",
    "USAGE_BATCHES",
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
AUTH_FAILURES = Counter(
    "modelmint_auth_failures_total",
    "Requests with a wrong API key or admin token, by outcome (rejected, or throttled: "
    "refused unread because the client address failed too often)",
    ["outcome"],
)
BILLING_REFUSALS = Counter(
    "modelmint_billing_refusals_total",
    "Requests refused at admission for billing reasons, before any model work",
    ["reason"],  # credit, budget, allowance, unpriced
)
BILLING_ALERTS = Counter(
    "modelmint_billing_alerts_total", "Billing alerts raised, by kind", ["kind"]
)
USAGE_BATCHES = Counter(
    "modelmint_usage_batches_total",
    "Usage batches committed by the metering writer, by how they were written: one_trip "
    "(no reads), two_trips (settled after reading), retried (a one-trip bet was lost)",
    ["way"],
)
CREDIT_LEASE_ADMISSIONS = Counter(
    "modelmint_credit_lease_admissions_total",
    "Paid requests by where their worst case was set aside: hold (a per-request database "
    "hold, counted at admission: the pool is too small to lease from, or the writer is "
    "failing), waited (for this process's lease to open or refill, counted at admission), "
    "or lease (in memory, waited or not; counted when the request's usage is settled)",
    ["source"],
)
BILLING_SHORTFALLS = Counter(
    "modelmint_billing_shortfalls_total",
    "Charges a wallet could not fully pay (each also logged at ERROR; should stay 0)",
)

# Dynamic batching of local models (serving.dynamic_batching), by model and deployment.
__all__ += [
    "BATCHER_BATCH_SIZE",
    "BATCHER_BUSY_SECONDS",
    "BATCHER_DROPPED",
    "BATCHER_ITEMS",
    "BATCHER_QUEUE_DEPTH",
    "LLM_BATCH_SEQUENCES",
    "LLM_BUSY_SECONDS",
    "LLM_DROPPED",
    "LLM_QUEUE_DEPTH",
    "LLM_SLOTS",
    "LLM_SLOTS_BUSY",
    "LLM_TOKENS",
]
BATCHER_QUEUE_DEPTH = Gauge(
    "modelmint_batcher_queue_depth",
    "Requests waiting for a batch of a local model",
    ["model", "deployment"],
    multiprocess_mode="livesum",
)
BATCHER_BATCH_SIZE = Histogram(
    "modelmint_batcher_batch_size",
    "Items per call of a local model's batch function",
    ["model", "deployment"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCHER_BUSY_SECONDS = Counter(
    "modelmint_batcher_busy_seconds_total",
    "Time a local model spent computing batches (its utilisation is the rate of this)",
    ["model", "deployment"],
)
BATCHER_ITEMS = Counter(
    "modelmint_batcher_items_total",
    "Items computed by a local model's batches (items/s is the rate of this)",
    ["model", "deployment"],
)
BATCHER_DROPPED = Counter(
    "modelmint_batcher_dropped_total",
    "Requests a batcher did not answer with results, by reason",
    ["model", "deployment", "reason"],  # queue_full, timeout, cancelled, error
)

# -- the local LLM engine (continuous batching) ------------------------------------------
LLM_QUEUE_DEPTH = Gauge(
    "modelmint_llm_queue_depth",
    "Requests waiting for a free slot of a local LLM",
    ["model", "deployment"],
    multiprocess_mode="livesum",
)
LLM_SLOTS_BUSY = Gauge(
    "modelmint_llm_slots_busy",
    "Slots of a local LLM holding a request (occupancy = this / modelmint_llm_slots)",
    ["model", "deployment"],
    multiprocess_mode="livesum",
)
LLM_SLOTS = Gauge(
    "modelmint_llm_slots",
    "Slots (sequences decoded together) of a local LLM",
    ["model", "deployment"],
    multiprocess_mode="livesum",
)
LLM_BATCH_SEQUENCES = Histogram(
    "modelmint_llm_batch_sequences",
    "Sequences in one decode step of a local LLM",
    ["model", "deployment"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
LLM_TOKENS = Counter(
    "modelmint_llm_engine_tokens_total",
    "Tokens a local LLM processed, by kind (prompt, generated, prompt_reused: kept in"
    " KV cells from an earlier prompt); tokens/s is the rate",
    ["model", "deployment", "kind"],
)
LLM_BUSY_SECONDS = Counter(
    "modelmint_llm_busy_seconds_total",
    "Time a local LLM spent in decode steps (utilisation is the rate of this)",
    ["model", "deployment"],
)
LLM_DROPPED = Counter(
    "modelmint_llm_dropped_total",
    "Requests a local LLM refused or dropped, by reason (queue_full, timeout)",
    ["model", "deployment", "reason"],
)
