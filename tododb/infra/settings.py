"""Configuration from the environment (``TODO_*`` plus the conventional ``DATABASE_URL``)."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TODO_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "TODO_DATABASE_URL"),
        description="PostgreSQL URL; unset means `todo dev` starts an embedded server.",
    )
    data_dir: Path = Field(
        default=Path(".tododb"),
        description="Where dev mode keeps the embedded PostgreSQL data and the dev JWT secret.",
    )
    db_schema: str = Field(default="public", description="Schema of the event store tables.")
    views_schema: str = Field(default="readmodels", description="Schema of the read models.")
    read_wait_seconds: float = Field(
        default=5.0, gt=0, le=60, description="How long X-Min-Position may wait."
    )
    read_wait_max: int = Field(
        default=1000,
        ge=1,
        description="X-Min-Position waits pending at once per API process; more answer 503.",
    )
    read_wait_max_per_user: int = Field(
        default=20, ge=1, description="X-Min-Position waits pending at once per user; more 429."
    )
    rate_limit_enabled: bool = Field(
        default=True, description="Per-user token buckets for commands and queries (429)."
    )
    rate_limit_commands_per_second: float = Field(
        default=20.0, gt=0, description="Commands (POST/PUT/PATCH/DELETE) per user per second."
    )
    rate_limit_commands_burst: int = Field(
        default=100, ge=1, description="Commands a user may send at once after a quiet spell."
    )
    rate_limit_queries_per_second: float = Field(
        default=50.0, gt=0, description="Queries (GET/HEAD) per user per second."
    )
    rate_limit_queries_burst: int = Field(
        default=200, ge=1, description="Queries a user may send at once after a quiet spell."
    )
    rate_limit_max_users: int = Field(
        default=100_000,
        ge=1,
        description="Users whose buckets a process keeps; the least recently seen go first.",
    )
    db_pool_size: int = Field(default=10, ge=1)
    db_pool_max_overflow: int = Field(default=10, ge=0)
    db_connect_timeout: int = Field(
        default=5, ge=1, description="Seconds to wait for a connection before answering 503."
    )

    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret; unset means a random one kept in data_dir (dev only).",
    )
    jwt_leeway_seconds: int = Field(default=10, ge=0)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    web_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API worker processes of `todo serve` (one GIL and one pool each).",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    conflict_retries: int = Field(default=8, ge=0)
    command_cache_size: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="Todos each API process keeps as it last stored them, so that its next "
        "command on one reads only newer events instead of replaying them all (0: off).",
    )

    # ---- Kafka: relay and consumers ---------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "TODO_KAFKA_BOOTSTRAP_SERVERS"),
        description="host:port[,...] of the Kafka brokers; unset means `todo dev` starts Tansu.",
    )
    kafka_topic: str = Field(default="todos.task", min_length=1)
    kafka_topic_partitions: int = Field(
        default=6, ge=1, description="Partitions of the topic when the relay creates it."
    )
    kafka_idempotence: bool = Field(
        default=True,
        description="Idempotent producer; must be false for Tansu, which rejects InitProducerId.",
    )
    kafka_request_timeout_ms: int = Field(default=10_000, ge=100)
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    relay_decode_processes: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Processes decoding events into CloudEvents; 0 decodes in the relay.",
    )
    relay_backoff_max_seconds: float = Field(
        default=2.0, gt=0, description="Cap of the relay's retry delays: it resumes within it."
    )
    consumer_max_attempts: int = Field(
        default=5, ge=1, description="Handler attempts before a message goes to the DLQ."
    )
    consumer_backoff_seconds: float = Field(default=0.2, ge=0)
    consumer_session_timeout_ms: int = Field(default=10_000, ge=1000)
    consumer_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    webhook_allow_private_targets: bool = Field(
        default=False,
        description=(
            "Let webhooks point at loopback, private and link-local addresses "
            "(local development); off in production: server-side request forgery."
        ),
    )
    webhook_max_attempts: int = Field(default=6, ge=1)
    webhook_backoff_seconds: float = Field(default=1.0, ge=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_circuit_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open an endpoint's circuit."
    )
    webhook_circuit_cooldown_seconds: float = Field(default=60.0, ge=0)
    relay_republish_on_loss: bool = Field(
        default=False,
        description=(
            "When the broker lost records it had acknowledged (an in-memory broker "
            "restarted), re-publish the whole log from position 1; `todo dev` sets it."
        ),
    )
    relay_loss_check_seconds: float = Field(
        default=30.0, gt=0, description="How often the relay compares the topic with its acks."
    )
    reminder_max_sleep_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Longest the reminder scheduler sleeps between looks at the schedule (other "
            "notifications services may arm reminders it is not woken for)."
        ),
    )
    reminder_late_after_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A reminder fired more than this after its time is marked late.",
    )
    reminder_batch_size: int = Field(
        default=100, ge=1, description="Reminders fired per transaction."
    )

    # ---- operations: worker probes and lag (issue 13) ---------------------------------
    probe_host: str = Field(
        default="127.0.0.1",
        description="Address of a worker's /metrics, /healthz, /readyz (0.0.0.0 in a container).",
    )
    probe_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "Port of a worker's /metrics, /healthz and /readyz (TODO_PROBE_PORT, one per "
            "process; `todo dev` and docker-compose set it); 0 serves none."
        ),
    )
    probe_stall_seconds: float = Field(
        default=60.0,
        gt=0,
        description="An active worker with lag whose position stood still this long is not ready.",
    )
    lag_refresh_seconds: float = Field(
        default=5.0, gt=0, description="How often a consumer reads its group's lag from the broker."
    )

    # ---- delta sync and the live stream (issue 12) ------------------------------------
    sync_token_max_age_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=1,
        description="Sync tokens older than this answer 410 (`sync-token-expired`): start over.",
    )
    sync_token_max_ahead: int = Field(
        default=1_000_000,
        ge=0,
        description=(
            "A sync token further ahead of the read model than this many log positions is "
            "from another database (410); nearer, the request waits like X-Min-Position."
        ),
    )
    stream_max_per_user: int = Field(
        default=5, ge=1, description="Open /v1/stream connections per user per API process (429)."
    )
    stream_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="A comment line on an idle stream this often (proxies)."
    )
    stream_queue_max: int = Field(
        default=1000,
        ge=1,
        description="Events a stream may have waiting for a slow client before it is cut off.",
    )

    def resolved_jwt_secret(self) -> str:
        """The configured secret, else a per-data-dir random one made on first use."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        path = self.data_dir / "jwt-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
