"""Settings of a ModelMint process: one typed place for every default.

Values come from ``MODELMINT_*`` environment variables (``MODELMINT_PORT=9000``)
or a ``.env`` file in the working directory. Nothing else reads the environment
for configuration.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELMINT_", env_file=".env", extra="ignore", frozen=True
    )

    # Everything the platform writes (database, artifacts) lives below this folder.
    home: Path = Path("var")
    # Empty means SQLite (WAL) at <home>/modelmint.db: no server needed to start.
    database_url: str = ""
    # NORMAL (WAL): a commit survives the process being killed (SIGKILL), which is what
    # metering promises, and costs no fsync (~0.6 ms less per request on one client
    # here). FULL also survives a power cut. PostgreSQL follows its own settings.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Protects /admin. `modelmint up` generates one when unset; it is never defaulted to a
    # constant, because a known default admin secret is a hole in every deployment.
    admin_token: SecretStr | None = None
    log_level: str = "INFO"
    # JSON logs for machines; `modelmint up` switches to plain text on a terminal.
    log_json: bool = True

    # Requests larger than this are refused with 413 before parsing: a chat prompt of a
    # 8k-token context is ~32 KB, so 4 MiB leaves room for long embedding batches.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Embedding requests may carry at most this many inputs (OpenAI allows 2048).
    max_embedding_inputs: int = Field(default=2048, ge=1)

    # Bundled local models, loaded by `modelmint up` unless switched off.
    load_bundled_models: bool = True
    # Context window of the local LLM. SmolLM2 was trained on 8k; 4k keeps memory small.
    llm_context: int = Field(default=4096, ge=256)
    # Requests the local LLM decodes together (one KV-cache slot of llm_context tokens each),
    # and how many more may wait for a slot before new ones get 503.
    llm_slots: int = Field(default=4, ge=1, le=64)
    llm_max_queued: int = Field(default=64, ge=0)
    # A queued request that got no slot within this many seconds is answered 504.
    llm_queue_timeout_s: float = Field(default=30.0, gt=0)
    # 0 means: as many threads as cores.
    llm_threads: int = Field(default=0, ge=0)

    # Remote upstream defaults; a deployment can override them.
    upstream_timeout_s: float = Field(default=60.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_max_retries: int = Field(default=2, ge=0, le=10)

    # Redis for cluster-wide rate limits (redis://host:6379/0); unset: limits per process.
    redis_url: str | None = None
    # A concurrency slot held longer than this is presumed lost (its process died).
    lease_ttl_s: float = Field(default=600.0, gt=0)

    # How long an in-memory copy of a key, route or billing plan may be served before it
    # is re-read. A revoked key stops working within this delay in every process.
    cache_ttl_s: float = Field(default=1.0, gt=0, le=60)

    # Output tokens a request without max_tokens is assumed to need at most, when its
    # worst-case cost is reserved on a prepaid wallet or counted against a free tier.
    default_max_tokens: int = Field(default=4096, ge=1)
    # A wallet reservation still open after this long is presumed lost (its process
    # died before metering the request) and is released.
    reservation_ttl_s: float = Field(default=3600.0, gt=0)
    # Prepaid credit and hard-budget room a gateway process leases to admit requests from
    # memory (see charging/leases.py): renewed every second while in use, admitted from
    # for half this long after the last renewal, and returned to the pool by any process's
    # sweep this long after a holder stopped renewing (it died). Longer: fewer requests
    # cut off by a database hiccup; shorter: a dead process's credit returns sooner.
    credit_lease_ttl_s: float = Field(default=30.0, ge=1.0, le=3600.0)

    # Demo data only: lets `modelmint demo traffic` meter requests of demo-* organisations
    # in the past (with the admin token; see demo/clock.py). Never turn it on
    # where real customers are billed.
    demo_time_travel: bool = False

    # Payment collection (``modelmint.payments``). Payments are on when the environment
    # variable named by ``stripe_secret_key_env`` holds a key; the secrets themselves are
    # read from the environment when needed and never stored or logged.
    stripe_secret_key_env: str = "STRIPE_SECRET_KEY"
    stripe_webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    stripe_publishable_key_env: str = "STRIPE_PUBLISHABLE_KEY"
    # Another Stripe API address: localstripe on a machine without Stripe, or in tests.
    stripe_api_base: str | None = None
    # How old a webhook's signed timestamp may be before it is refused (replay guard).
    stripe_webhook_tolerance_s: int = Field(default=300, ge=1)
    # Where the customer portal loads Stripe.js from (localstripe serves a stand-in at
    # <its address>/js.stripe.com/v3/).
    stripe_js_url: str = "https://js.stripe.com/v3/"
    # Dunning: retry a failed invoice payment this many days after the first failure,
    # and refuse the organisation's requests (402) this many days after it.
    payment_retry_days: str = "1,3,7"
    payment_grace_days: float = Field(default=10.0, ge=0)

    # What an hour of the machine serving the bundled local models costs, in the currency
    # the plans are priced in. `modelmint up` gives it to each bundled deployment that has
    # no serving cost yet, so that requests carry a cost from the first run and margins
    # are not a flattering 100 %. 0.10 is roughly an on-demand cloud VM of 2-4 vCPUs: set
    # your machine's own price (0 for none). A rate already on a deployment is kept;
    # change it with `modelmint models cost NAME --cost-per-hour ...`.
    local_cost_per_hour: Decimal = Field(default=Decimal("0.10"), ge=0, allow_inf_nan=False)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    # The URL only: ``storage.Database.from_settings`` opens it, so settings stay below storage.
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelmint.db'}"

    @property
    def cpu_threads(self) -> int:
        return self.llm_threads or (os.cpu_count() or 1)
