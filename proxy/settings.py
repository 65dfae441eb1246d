"""Every knob of the sidecar, in one pydantic-settings tree.

Environment variables use the prefix ``REGISTRY_PROXY_`` and ``__`` between nesting levels, e.g.
``REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD=5``. Secrets can also come from files: set
``REGISTRY_PROXY_DATABASE_URL_FILE`` or ``REGISTRY_PROXY_TOKENS_FILE``. Defaults are the safe
choice for a sidecar on localhost; ``config/example.env`` lists each knob with its default.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
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


class JournalOnDamage(StrEnum):
    REFUSE = "refuse"
    QUARANTINE = "quarantine"


class DatabaseSettings(BaseModel):
    pool_min_size: int = Field(
        2, ge=0, le=100, description="connections kept open; 0 to 100, at most pool_max_size"
    )
    pool_max_size: int = Field(
        10, ge=1, le=200, description="connections for requests at once (the bulkhead); 1 to 200"
    )
    background_connections: int = Field(
        5,
        ge=1,
        le=20,
        description="connections beyond pool_max_size kept for the journal replay and "
        "maintenance, so they run however busy requests keep the pool; 1 to 20",
    )
    acquire_timeout_ms: int = Field(
        1_000,
        ge=1,
        le=60_000,
        description="longest wait in the queue for a database connection (the request's "
        "deadline may cut it shorter); past it the answer is 503 overloaded and nothing is "
        "journaled; 1 to 60000",
    )
    queue_max: int = Field(
        256,
        ge=0,
        le=100_000,
        description="requests that may wait for a database connection; beyond, 503 overloaded "
        "at once; 0 to 100000",
    )
    connect_timeout_ms: int = Field(
        1_000, ge=10, le=60_000, description="TCP connect plus PostgreSQL startup; 10 to 60000"
    )
    statement_cache_size: int = Field(
        256,
        ge=0,
        le=10_000,
        description="prepared statements per connection (0 with pooler=transaction); 0 to 10000",
    )
    pooler: Literal["none", "session", "transaction"] = Field(
        "none",
        description="what database_url goes through: none (PostgreSQL), session or transaction "
        "(a pooler in that mode; transaction needs database_direct_url; docs/fleet.md)",
    )
    idle_timeout_ms: int = Field(
        30_000, ge=0, le=3_600_000, description="idle connections close within it; 0 to 3600000"
    )
    reconnect_interval_ms: int = Field(
        500,
        ge=10,
        le=60_000,
        description="pause between attempts to (re)open the pool; 10 to 60000",
    )
    ledger_retention_hours: int = Field(
        168,
        ge=1,
        le=87_600,
        description="how long op ids and Idempotency-Keys are remembered; 1 to 87600",
    )


class RequestSettings(BaseModel):
    default_timeout_ms: int = Field(
        2_000,
        ge=10,
        le=120_000,
        description="deadline of a request without X-Request-Timeout; 10 to 120000",
    )
    max_body_bytes: int = Field(
        65_536,
        ge=256,
        le=16 * 1024 * 1024,
        description="bodies larger than this get 413; 256 to 16777216",
    )
    max_header_bytes: int = Field(
        8_190, ge=1024, le=65_536, description="per header line; 1024 to 65536"
    )
    max_json_depth: int = Field(8, ge=2, le=64, description="nesting of request bodies; 2 to 64")
    max_array_items: int = Field(
        64, ge=1, le=10_000, description="items per JSON array; 1 to 10000"
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a client must send its request within this; > 0 and <= 300"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a client must send its request line and headers within this many seconds "
        "(from connecting, or from its first byte of a request after the previous answer), or it "
        "is answered 408 and disconnected; > 0 and <= 300",
    )
    max_connections: int = Field(
        4_096,
        ge=16,
        le=1_000_000,
        description="client connections open at once (lowered to fit the descriptor limit); at "
        "the cap a new connection closes the oldest idle one, or is answered 503 when none is "
        "idle; 16 to 1000000",
    )
    drain_timeout_s: float = Field(
        10.0, ge=0, le=300, description="SIGTERM: time left for in-flight requests; 0 to 300"
    )


class OverloadSettings(BaseModel):
    max_loop_lag_ms: int = Field(
        100,
        ge=1,
        le=60_000,
        description="when the event loop stays this far behind for loop_lag_window_ms, new "
        "database work is refused (503 overloaded; reads from the replica) until it catches "
        "up; 1 to 60000",
    )
    loop_lag_window_ms: int = Field(
        1_000,
        ge=50,
        le=60_000,
        description="how long the lag must stand before shedding; 50 to 60000",
    )


class RateLimitSettings(BaseModel):
    enabled: bool = Field(True, description="per-token rate limiting on or off")
    rate_per_s: float = Field(1_000.0, gt=0, description="token bucket refill per token; > 0")
    burst: int = Field(2_000, ge=1, description="token bucket size per token; >= 1")


class BreakerSettings(BaseModel):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that trip; >= 1")
    window_s: float = Field(10.0, gt=0, description="sliding window of the rate rules; > 0")
    min_calls: int = Field(20, ge=1, description="calls in the window before rates count; >= 1")
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="failure share that trips; > 0 and <= 1"
    )
    slow_call_ms: int = Field(1_000, ge=1, description="a call slower than this is slow; >= 1")
    slow_call_rate: float = Field(
        0.8, gt=0, le=1, description="slow share that trips; > 0 and <= 1"
    )
    open_base_ms: int = Field(
        1_000, ge=1, description="first open period; >= 1, at most open_max_ms"
    )
    open_max_ms: int = Field(30_000, ge=1, description="cap of the growing open period; >= 1")
    open_multiplier: float = Field(
        2.0, ge=1, description="growth of the open period per re-trip; >= 1"
    )
    open_jitter: float = Field(
        0.2, ge=0, lt=1, description="+/- share of random jitter; >= 0 and < 1"
    )
    half_open_max_calls: int = Field(3, ge=1, description="concurrent trial calls; >= 1")
    half_open_successes: int = Field(3, ge=1, description="successes that close; >= 1")
    probe_interval_ms: int = Field(250, ge=10, description="health probe period while open; >= 10")
    probe_timeout_ms: int = Field(500, ge=10, description="timeout of one probe query; >= 10")
    probe_jitter: float = Field(
        0.2, ge=0, lt=1, description="+/- share of jitter of each probe period; >= 0 and < 1"
    )


class RetrySettings(BaseModel):
    attempts: int = Field(3, ge=1, le=10, description="tries per call, the first included; 1 to 10")
    base_ms: int = Field(
        20, ge=0, description="first backoff ceiling (full jitter); >= 0, at most max_ms"
    )
    max_ms: int = Field(500, ge=0, description="largest backoff ceiling; >= 0")
    budget_ratio: float = Field(0.2, ge=0, le=10, description="retries per recent request; 0 to 10")
    budget_min_per_s: float = Field(
        5.0, ge=0, description="retries always allowed per second; >= 0"
    )
    budget_window_s: float = Field(10.0, gt=0, description="how far back 'recent' reaches; > 0")


class ReplicaSettings(BaseModel):
    enabled: bool = Field(True, description="keep a local replica for reads during outages")
    max_agents: int = Field(100_000, ge=0, description="beyond this the replica is partial; >= 0")
    max_staleness_ms: int = Field(
        1_000, ge=0, description="read_mode=replica serves while fresher than this; >= 0"
    )
    resync_interval_s: float = Field(
        60.0, gt=0, description="incremental resync period (+/- 20%: rows changed since); > 0"
    )
    full_resync_interval_s: float = Field(
        3_600.0, gt=0, description="full reload period (+/- 20%), behind the resyncs; > 0"
    )
    snapshot_interval_s: float = Field(30.0, gt=0, description="snapshot period (+/- 20%); > 0")
    notify_window_ms: float = Field(
        10.0,
        ge=0,
        le=1_000,
        description="after a change notification, later ones are read together once this has "
        "passed: one wake-up per window instead of one per write; 0 reads each at once; 0 to 1000",
    )


class JournalSettings(BaseModel):
    dir: Path = Field(Path("var/journal"), description="journal and replica snapshot directory")
    fsync: bool = Field(True, description="fsync before 202; off only for throwaway demos")
    replay_batch: int = Field(
        100,
        ge=1,
        description="entries applied per replay round, across the lanes; a write waiting for its "
        "agent's backlog waits for the round in flight, so smaller rounds answer it sooner; >= 1",
    )
    replay_lanes: int = Field(
        4,
        ge=1,
        le=16,
        description="transactions the replay runs side by side, each agent's entries in one, in "
        "order; each takes a background connection; 1 to 16",
    )
    reserve_bytes: int = Field(
        262_144,
        ge=4096,
        le=1_073_741_824,
        description="disk space held back for outcome records and compaction, on top of the room "
        "the outcomes of pending entries take; new entries get 503 before it is touched; 4096 to "
        "1073741824",
    )
    on_damage: JournalOnDamage = Field(
        JournalOnDamage.REFUSE,
        description="acknowledged records found damaged at start: refuse (start-up fails, "
        "nothing is dropped) or quarantine (the damaged bytes go to a journal.log.damaged-* "
        "side file and the rest starts)",
    )


class FailoverSettings(BaseModel):
    guard: bool = Field(
        True,
        description="keep each committed write until every standby has flushed it, and apply "
        "again those a newly promoted primary lacks (asynchronous replication); needs the journal",
    )
    check_interval_ms: int = Field(
        1_000,
        ge=50,
        le=60_000,
        description="how often the primary's WAL position is read (+/- 20%); 50 to 60000",
    )
    hold_ms: int = Field(
        10_000,
        ge=0,
        le=3_600_000,
        description="how long a write is kept when standbys' positions cannot be read (the role "
        "is not in pg_monitor); 0 to 3600000",
    )
    max_writes: int = Field(
        50_000,
        ge=0,
        le=10_000_000,
        description="most writes kept, oldest released first; 0 to 10000000",
    )


class LogSettings(BaseModel):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto (console on a TTY, JSON lines otherwise), json or console"
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

    host: str = Field(
        "127.0.0.1", description="listen address; a loopback one unless allow_non_loopback"
    )
    port: int = Field(3580, ge=0, le=65535, description="listen port; 0 to 65535")
    allow_non_loopback: bool = Field(
        False, description="must be true to bind anything but a loopback address"
    )
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL DSN, postgresql://... or postgres://..."
    )
    database_url_file: Path | None = Field(
        None, description="file holding the DSN, read when database_url is unset"
    )
    database_direct_url: SecretStr | None = Field(
        None, description="DSN for LISTEN and migrations, not through a pooler; else database_url"
    )
    database_direct_url_file: Path | None = Field(
        None, description="file holding that DSN, read when database_direct_url is unset"
    )
    tokens: SecretStr | None = Field(
        None,
        description='JSON list of {"token", "tenant", "role", "id"?}: token 16 to 512 characters '
        '(or "token_sha256", its 64 hex digit SHA-256), role reader, writer or admin, tenant and '
        "id 1 to 128 letters, digits, '.', '_', ':' or '-'; not together with tokens_file",
    )
    tokens_file: Path | None = Field(
        None, description="file holding that JSON list, reloaded on SIGHUP; not with tokens"
    )
    read_mode: ReadMode = Field(
        ReadMode.DATABASE,
        description="database (PostgreSQL, the replica on failure) or replica (the replica "
        "while fresher than replica.max_staleness_ms)",
    )
    write_fallback: WriteFallback = Field(
        WriteFallback.JOURNAL,
        description="journal (202, replayed later) or reject (503 with Retry-After)",
    )
    max_agents: int = Field(10_000, ge=1, description="agents per tenant; >= 1")
    migrate_on_start: bool = Field(True, description="apply the schema when serving starts")
    heap_trim_interval_s: float = Field(
        60.0, ge=0, description="return the C heap's free pages this often (glibc); >= 0, 0 never"
    )
    gc_full_interval_s: float = Field(
        600.0, ge=0, description="how often GC walks frozen objects too; >= 0, 0 never freezes"
    )

    database: DatabaseSettings = DatabaseSettings()
    request: RequestSettings = RequestSettings()
    overload: OverloadSettings = OverloadSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    replica: ReplicaSettings = ReplicaSettings()
    journal: JournalSettings = JournalSettings()
    failover: FailoverSettings = FailoverSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self.database_url = _dsn("database_url", self.database_url, self.database_url_file)
        self.database_direct_url = _dsn(
            "database_direct_url", self.database_direct_url, self.database_direct_url_file
        )
        if self.database.pooler == "transaction" and self.database_direct_url is None:
            raise ValueError(
                "database.pooler=transaction needs database_direct_url: LISTEN and the "
                "migrations' advisory lock do not work through a transaction pooler"
            )
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


ENV_PREFIX = "REGISTRY_PROXY_"
# The test suite's own variables (REGISTRY_PROXY_TEST_DATABASE_URL) and `registry-proxy status`'s
# token (REGISTRY_PROXY_STATUS_TOKEN, _FILE); the sidecar never reads them.
_NOT_SETTINGS_PREFIX = ("REGISTRY_PROXY_TEST_", "REGISTRY_PROXY_STATUS_TOKEN")


def env_names() -> list[str]:
    """Every environment variable the settings read: each leaf (REGISTRY_PROXY_PORT,
    REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD, the _FILE variants that exist) and each group as
    a whole, which pydantic-settings parses as JSON (REGISTRY_PROXY_BREAKER='{"window_s": 5}')."""
    names = []
    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        names.append(env)
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names.extend(f"{env}__{sub.upper()}" for sub in group.model_fields)
    return names


def unknown_env(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(name, closest valid name or None) for each REGISTRY_PROXY_* variable that is no setting.

    pydantic-settings ignores such a variable, so a misspelt name silently leaves the setting at
    its default. Names match case-insensitively, as the settings themselves do. Only names are
    looked at, never values (a misspelt DATABASE_URL still holds a secret)."""
    known = env_names()
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    found: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(_NOT_SETTINGS_PREFIX):
            continue
        if upper in known:
            continue
        # Compared without the shared prefix, which would make every name look alike.
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
        found.append((name, suffixes[close[0]] if close else None))
    return found


def unknown_env_messages(environ: Mapping[str, str]) -> list[str]:
    return [
        f"{name} is not a setting" + (f" (did you mean {hint}?)" if hint else "")
        for name, hint in unknown_env(environ)
    ]


def _dsn(name: str, value: SecretStr | None, file: Path | None) -> SecretStr | None:
    """A DSN from its variable, else from its file; checked for a PostgreSQL scheme."""
    if value is None and file is not None:
        try:
            value = SecretStr(file.read_text().strip())
        except OSError as exc:
            raise ValueError(f"{name}_file: cannot read {file}") from exc
    url = value.get_secret_value() if value is not None else "postgres://"
    if not url.startswith(("postgres://", "postgresql://")):
        raise ValueError(f"{name} must start with postgresql:// or postgres://")
    return value


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
    for name in ("database_url", "database_direct_url"):
        url = getattr(settings, name)
        if url is not None:
            data[name] = mask_dsn(url.get_secret_value())
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
