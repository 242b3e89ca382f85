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
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    conflict_retries: int = Field(default=8, ge=0)

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
