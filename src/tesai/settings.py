"""Every tunable of the control plane, in one place.

Values come from the environment (prefix ``TESAI_``) or a ``.env`` file in the working
directory. A field left unset takes the embedded default: no ``database_url`` means the
control plane starts its own PostgreSQL under ``home``; no ``redis_url`` means an in-process
cache; no ``broker_url`` means background tasks run in-process on the same schedule.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("tesai", appauthor=False))


class OIDCProvider(BaseSettings):
    """One OAuth2/OIDC identity provider users may log in with."""

    name: str
    issuer: str
    client_id: str
    client_secret: SecretStr = SecretStr("")
    scopes: str = "openid email profile"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TESAI_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    # --- where things live -------------------------------------------------------------
    home: Path = Field(default_factory=_default_home)
    """State directory: embedded PostgreSQL data, signing keys, agent state (embedded mode)."""
    environment: str = "development"
    """`development`, `test` or `production`; production refuses embedded defaults."""

    # --- HTTP ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    """Uvicorn worker processes for `tesai server`."""
    public_url: str = "http://127.0.0.1:8000"
    """The URL users and agents reach the control plane at (used in join commands, SIWS)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the API from a browser; empty allows none cross-origin."""
    max_body_bytes: int = 1_048_576
    """Requests with a larger body get 413."""

    # --- data ----------------------------------------------------------------------------
    database_url: str | None = None
    """postgresql+asyncpg://… ; unset starts an embedded PostgreSQL under `home`."""
    database_pool_size: int = 10
    database_max_overflow: int = 10
    redis_url: str | None = None
    """redis://… ; unset uses an in-process cache (single process only)."""
    redis_prefix: str = "tesai:"
    """Prefix of every Redis key, so deployments (and test runs) can share one server."""
    broker_url: str | None = None
    """amqp://… ; unset runs tasks in-process."""
    task_queue_prefix: str = "tesai"
    """Prefix of Celery queue names."""

    # --- auth ----------------------------------------------------------------------------
    jwt_private_key_file: Path | None = None
    """PEM Ed25519 private key for access tokens; unset generates one under `home`."""
    jwt_issuer: str = "tesai"
    jwt_audience: str = "tesai-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    wallet_nonce_ttl_s: int = 300
    siws_domain: str = "127.0.0.1:8000"
    """Domain a Sign-In-With-Solana message must name."""
    siws_chain_id: str = "mainnet"
    oidc_providers: list[OIDCProvider] = Field(default_factory=list)
    oidc_redirect_base: str = "http://127.0.0.1:8000"

    # --- abuse protection ----------------------------------------------------------------
    rate_limit_per_ip: float = 50.0
    """Sustained requests per second allowed from one IP address."""
    rate_limit_per_ip_burst: int = 200
    rate_limit_per_principal: float = 100.0
    """Sustained requests per second for one user, API key or device."""
    rate_limit_per_principal_burst: int = 400
    rate_limit_enabled: bool = True

    # --- logging -------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
