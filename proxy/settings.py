"""Every knob of the sidecar, in one pydantic-settings tree.

Environment variables use the prefix ``REGISTRY_PROXY_`` and ``__`` between nesting levels, e.g.
``REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD=5``. Secrets can also come from files: set
``REGISTRY_PROXY_DATABASE_URL_FILE`` or ``REGISTRY_PROXY_TOKENS_FILE``. Defaults are the safe
choice for a sidecar on localhost; ``config/example.env`` lists each knob with its default.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ReadMode(StrEnum):
    DATABASE = "database"
    REPLICA = "replica"


class WriteFallback(StrEnum):
    JOURNAL = "journal"
    REJECT = "reject"


class DatabaseSettings(BaseModel):
    pool_min_size: int = Field(2, ge=0, le=100, description="connections kept open")
    pool_max_size: int = Field(10, ge=1, le=200, description="upper bound of the pool (bulkhead)")
    acquire_timeout_ms: int = Field(
        100, ge=1, le=60_000, description="longest wait for a free pooled connection"
    )
    connect_timeout_ms: int = Field(
        1_000, ge=10, le=60_000, description="TCP connect plus PostgreSQL startup"
    )
    statement_cache_size: int = Field(
        256, ge=0, le=10_000, description="prepared statements per connection"
    )
    reconnect_interval_ms: int = Field(
        500, ge=10, le=60_000, description="pause between attempts to (re)open the pool"
    )
    ledger_retention_hours: int = Field(
        168, ge=1, le=87_600, description="how long op ids and Idempotency-Keys are remembered"
    )


class RequestSettings(BaseModel):
    default_timeout_ms: int = Field(
        2_000, ge=10, le=120_000, description="deadline of a request without X-Request-Timeout"
    )
    max_body_bytes: int = Field(65_536, ge=256, le=16 * 1024 * 1024, description="413 above")
    max_header_bytes: int = Field(8_190, ge=1024, le=65_536, description="per header line")
    max_json_depth: int = Field(8, ge=2, le=64, description="nesting of request bodies")
    max_array_items: int = Field(64, ge=1, le=10_000, description="items per JSON array")
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a client must send its request within this"
    )
    drain_timeout_s: float = Field(
        10.0, ge=0, le=300, description="SIGTERM: time left for in-flight requests"
    )


class RateLimitSettings(BaseModel):
    enabled: bool = True
    rate_per_s: float = Field(1_000.0, gt=0, description="token bucket refill per token")
    burst: int = Field(2_000, ge=1, description="token bucket size per token")


class BreakerSettings(BaseModel):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that trip")
    window_s: float = Field(10.0, gt=0, description="sliding window of the rate rules")
    min_calls: int = Field(20, ge=1, description="calls in the window before rates count")
    failure_rate: float = Field(0.5, gt=0, le=1, description="failure share that trips")
    slow_call_ms: int = Field(1_000, ge=1, description="a call slower than this is slow")
    slow_call_rate: float = Field(0.8, gt=0, le=1, description="slow share that trips")
    open_base_ms: int = Field(1_000, ge=1, description="first open period")
    open_max_ms: int = Field(30_000, ge=1, description="cap of the growing open period")
    open_multiplier: float = Field(2.0, ge=1, description="growth of the open period per re-trip")
    open_jitter: float = Field(0.2, ge=0, lt=1, description="+/- share of random jitter")
    half_open_max_calls: int = Field(3, ge=1, description="concurrent trial calls")
    half_open_successes: int = Field(3, ge=1, description="successes that close")
    probe_interval_ms: int = Field(250, ge=10, description="health probe period while open")
    probe_timeout_ms: int = Field(500, ge=10, description="timeout of one probe query")


class RetrySettings(BaseModel):
    attempts: int = Field(3, ge=1, le=10, description="tries per call, the first included")
    base_ms: int = Field(20, ge=0, description="first backoff ceiling (full jitter)")
    max_ms: int = Field(500, ge=0, description="largest backoff ceiling")
    budget_ratio: float = Field(0.2, ge=0, le=10, description="retries per recent request")
    budget_min_per_s: float = Field(5.0, ge=0, description="retries always allowed per second")
    budget_window_s: float = Field(10.0, gt=0, description="how far back 'recent' reaches")


class ReplicaSettings(BaseModel):
    enabled: bool = True
    max_agents: int = Field(100_000, ge=0, description="beyond this the replica is partial")
    max_staleness_ms: int = Field(
        1_000, ge=0, description="read_mode=replica serves while fresher than this"
    )
    resync_interval_s: float = Field(60.0, gt=0, description="full reload period")
    snapshot_interval_s: float = Field(30.0, gt=0, description="snapshot to disk period")


class JournalSettings(BaseModel):
    dir: Path = Field(Path("var/journal"), description="journal and replica snapshot directory")
    fsync: bool = Field(True, description="fsync before 202; off only for throwaway demos")
    replay_batch: int = Field(100, ge=1, description="entries applied per replay round")


class LogSettings(BaseModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise"
    )
    access: bool = Field(
        False,
        description="a line for every request, not only failed ones; costs almost half of "
        "peak read throughput",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REGISTRY_PROXY_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(3580, ge=0, le=65535, description="listen port")
    allow_non_loopback: bool = Field(
        False, description="must be true to bind anything but a loopback address"
    )
    database_url: SecretStr | None = Field(None, description="PostgreSQL DSN")
    database_url_file: Path | None = Field(None, description="file holding the DSN")
    tokens: SecretStr | None = Field(None, description='JSON list of {"token", "tenant", "role"}')
    tokens_file: Path | None = Field(None, description="file holding that JSON list")
    read_mode: ReadMode = ReadMode.DATABASE
    write_fallback: WriteFallback = WriteFallback.JOURNAL
    max_agents: int = Field(10_000, ge=1, description="agents per tenant")
    migrate_on_start: bool = Field(True, description="apply the schema when serving starts")

    database: DatabaseSettings = DatabaseSettings()
    request: RequestSettings = RequestSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    replica: ReplicaSettings = ReplicaSettings()
    journal: JournalSettings = JournalSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.database_url is None and self.database_url_file is not None:
            try:
                text = self.database_url_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"database_url_file: cannot read {self.database_url_file}"
                ) from exc
            self.database_url = SecretStr(text)
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            if not url.startswith(("postgres://", "postgresql://")):
                raise ValueError("database_url must start with postgresql:// or postgres://")
        if not self.allow_non_loopback and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address; "
                "set REGISTRY_PROXY_ALLOW_NON_LOOPBACK=true to expose the sidecar"
            )
        if self.tokens is not None and self.tokens_file is not None:
            raise ValueError(
                "set REGISTRY_PROXY_TOKENS or REGISTRY_PROXY_TOKENS_FILE, not both "
                "(SIGHUP reloads the file, which would silently replace the variable)"
            )
        if self.database.pool_min_size > self.database.pool_max_size:
            raise ValueError("database.pool_min_size must not exceed database.pool_max_size")
        if self.breaker.open_base_ms > self.breaker.open_max_ms:
            raise ValueError("breaker.open_base_ms must not exceed breaker.open_max_ms")
        if self.retry.base_ms > self.retry.max_ms:
            raise ValueError("retry.base_ms must not exceed retry.max_ms")
        return self

    def tokens_json(self) -> str | None:
        """The raw token list, from the variable or the file; parsed by `proxy.http.auth`."""
        if self.tokens is not None:
            return self.tokens.get_secret_value()
        if self.tokens_file is not None:
            return self.tokens_file.read_text()
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data with every secret replaced by a mask."""
    data = settings.model_dump(mode="json")
    if settings.database_url is not None:
        data["database_url"] = mask_dsn(settings.database_url.get_secret_value())
    if settings.tokens is not None:
        data["tokens"] = "**********"
    return data


_SECRET_PARAMS = ("password", "sslpassword")


def mask_dsn(dsn: str) -> str:
    """postgresql://user:secret@host/db?password=x -> postgresql://user:***@host/db?password=***"""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return dsn
    base, qmark, query = rest.partition("?")
    if "@" in base:
        creds, at, tail = base.rpartition("@")
        user, colon, _ = creds.partition(":")
        base = f"{user}{':***' if colon else ''}{at}{tail}"
    if qmark:
        params = []
        for pair in query.split("&"):
            key, eq, _value = pair.partition("=")
            params.append(f"{key}=***" if eq and key.lower() in _SECRET_PARAMS else pair)
        query = "&".join(params)
    return f"{scheme}://{base}{qmark}{query}"
