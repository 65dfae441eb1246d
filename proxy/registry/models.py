"""The registry's data shapes: request bodies (validated strictly) and answers.

The same models validate requests and generate the OpenAPI document, so the two cannot drift:
every rule a request must meet is stated here once, as an annotation that both enforces it and
writes it into the JSON schema (`Rule`), or as a pydantic constraint that does both itself.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic.types import Strict as StrictInput
from pydantic_core import CoreSchema, core_schema

# Patterns are written for three readers at once: Python's `re`, the Rust `regex` crate
# (pydantic, and JSON Schema validators built on it) and ECMA-262. Hence [0-9] rather than \d
# (Unicode digits in two of them) and escapes of BMP code points only.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_LIST_ITEMS = 32
MAX_ACTIVE_TASKS = 1_000_000
MAX_CONCURRENT_TASKS = 10_000

# Characters a name or a capability must not contain: controls, separators other than the
# space, invisible format characters (zero-width, direction overrides, the byte order mark),
# private use and noncharacters of the BMP.
_UNPRINTABLE = (
    r"\x00-\x1f\x7f-\x9f\xa0\xad"
    r"\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    r"\u1680\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000"
    r"\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff9-\ufffb\ufffe\uffff"
)


def _text_pattern(also_excluded: str = "") -> str:
    """Printable characters, neither starting nor ending with a space."""
    inner = f"[^{_UNPRINTABLE}{also_excluded}]"
    edge = f"[^{_UNPRINTABLE}{also_excluded} ]"
    return f"^{edge}(?:{inner}*{edge})?$"


TEXT_PATTERN = _text_pattern()
# Query strings list capabilities separated by commas, so a comma cannot be part of one.
CAPABILITY_PATTERN = _text_pattern(",")

# If-Match: "*", or an ETag of this API (a revision), strong or weak, quoted or bare.
IF_MATCH_PATTERN = r'^(?:\*|(?:W/)?"[0-9]{1,18}"|[0-9]{1,18})$'


def _rfc3339_pattern(first_digit: str, leap_centuries: str) -> str:
    """RFC 3339 date-times with an offset whose year starts with `first_digit`, every day
    checked against its month (29 February in leap years only), seconds 00 to 59 and at most
    six digits of fraction: exactly the strings the datetime parser takes."""
    year = f"{first_digit}[0-9]{{3}}"
    leap = f"(?:{first_digit}[0-9](?:0[48]|[2468][048]|[13579][26])|{leap_centuries}00)"
    month_day = (
        "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
        "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
        "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    )
    date = f"(?:{year}-{month_day}|{leap}-02-29)"
    time = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?"
    offset = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
    return f"^{date}T{time}{offset}$"


# Reports: the year 2000 or later, as written.
TIMESTAMP_PATTERN = _rfc3339_pattern("[2-9]", "(?:[2468][048]|[3579][26])")
# Bounds of an audit query: the years 2000 to 8999, as written.
AUDIT_TIME_PATTERN = _rfc3339_pattern("[2-8]", "(?:[2468][048]|[357][26])")


class Rule:
    """One rule a request value must meet, enforced and documented by the same object.

    `check` raises ValueError with the message a client sees; `schema` is merged into the JSON
    schema of the annotated type, so the OpenAPI document states the rule the check applies.
    `before=True` runs the check on the raw input, before pydantic converts it."""

    __slots__ = ("before", "check", "schema")

    def __init__(self, check: Callable[[Any], Any], *, before: bool = False, **schema: Any) -> None:
        self.check = check
        self.before = before
        self.schema = schema

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        inner = handler(source)
        if self.before:
            return core_schema.no_info_before_validator_function(self.check, inner)
        return core_schema.no_info_after_validator_function(self.check, inner)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(self.schema)
        return json_schema


def matches(pattern: str, message: str) -> Rule:
    """The whole value matches `pattern`, stated as the schema's `pattern`."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if regex.fullmatch(value) is None:
            raise ValueError(message)
        return value

    return Rule(check, pattern=pattern)


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("values must be unique")
    return values


UNIQUE = Rule(_unique, uniqueItems=True)


def _whole_number(value: Any) -> Any:
    # JSON has one kind of number, and JSON Schema reads 797.0 as the integer 797: so does the
    # sidecar. Strings and booleans stay what they are, and the strict check refuses them.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


AgentId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
_PRINTABLE = "must be printable characters, neither starting nor ending with a space"
Capability = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    matches(CAPABILITY_PATTERN, _PRINTABLE + ", without a comma"),
]
PRINTABLE = matches(TEXT_PATTERN, _PRINTABLE)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), PRINTABLE]
ModelFamily = Annotated[str, StringConstraints(min_length=1, max_length=64), PRINTABLE]
# Integers of a JSON body: numbers without a fraction (797 or 797.0), never "797" nor true.
# The bounds come before the conversion, so they reach the integer schema (and the document).
ConcurrentTasks = Annotated[
    int,
    StrictInput(),
    Field(ge=1, le=MAX_CONCURRENT_TASKS),
    BeforeValidator(_whole_number),
]
TaskCount = Annotated[
    int, StrictInput(), Field(ge=0, le=MAX_ACTIVE_TASKS), BeforeValidator(_whole_number)
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _written_as(pattern: str, message: str) -> Rule:
    """A date-time given as a string matching `pattern` (checked before it is parsed)."""
    regex = re.compile(pattern)

    def check(value: Any) -> Any:
        if not isinstance(value, str) or regex.fullmatch(value) is None:
            raise ValueError(message)
        return value

    return Rule(check, before=True, pattern=pattern)


# A report from the future would win every last-writer-wins comparison until that date.
_MAX_CLOCK_SKEW = timedelta(minutes=5)


def _not_ahead(value: datetime) -> datetime:
    if value > datetime.now(UTC) + _MAX_CLOCK_SKEW:
        raise ValueError("must not be more than 5 minutes in the future")
    return value


Timestamp = Annotated[
    AwareDatetime,
    _written_as(
        TIMESTAMP_PATTERN,
        "must be an RFC 3339 date-time with an offset, like 2024-05-01T12:00:00Z, "
        "in the year 2000 or later",
    ),
    AfterValidator(_not_ahead),
    Field(
        description="RFC 3339 date-time with an offset (Z or +hh:mm), the year 2000 or later "
        "as written, and at most 5 minutes ahead of the sidecar's clock"
    ),
]
AuditTime = Annotated[
    AwareDatetime,
    _written_as(
        AUDIT_TIME_PATTERN,
        "must be an RFC 3339 date-time with an offset, in the years 2000 to 8999",
    ),
    Field(description="RFC 3339 date-time with an offset, the years 2000 to 8999 as written"),
]

CapabilityList = Annotated[list[Capability], Field(max_length=MAX_LIST_ITEMS), UNIQUE]


def _without_null(schema: dict[str, Any]) -> None:
    kept = [s for s in schema.pop("anyOf", ()) if s != {"type": "null"}]
    if len(kept) == 1:
        schema.update(kept[0])
    elif kept:
        schema["anyOf"] = kept
    schema.pop("default", None)


def optional() -> Any:
    """A field of type `X | None` that may be left out but, when given, is never null (the
    model refuses it, or a query string cannot carry it): the document shows only X."""
    return Field(None, json_schema_extra=_without_null)


class Strict(BaseModel):
    """Unknown fields are an error: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=False)


class Capabilities(Strict):
    task_types: Annotated[list[Capability], Field(min_length=1, max_length=MAX_LIST_ITEMS), UNIQUE]
    languages: CapabilityList = Field(default_factory=list)
    specializations: CapabilityList = Field(default_factory=list)


class RegisterRequest(Strict):
    agent_id: AgentId
    name: Name
    model_family: ModelFamily
    capabilities: Capabilities
    max_concurrent_tasks: ConcurrentTasks = 10


class PatchRequest(Strict):
    """At least one field; a field given is never null."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Name | None = optional()
    model_family: ModelFamily | None = optional()
    capabilities: Capabilities | None = optional()
    max_concurrent_tasks: ConcurrentTasks | None = optional()

    @model_validator(mode="after")
    def _not_empty(self) -> PatchRequest:
        if not self.model_fields_set:
            raise ValueError("a patch must change at least one field")
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class LoadRequest(Strict):
    active_tasks: TaskCount
    queued_tasks: TaskCount
    observed_at: Timestamp


class HeartbeatRequest(Strict):
    """An empty body is fine; `observed_at` lets a relayed heartbeat keep its own time."""

    observed_at: Timestamp | None = None


class PerformanceRequest(Strict):
    event_id: EventId | None = None
    success: bool = Field(strict=True)
    quality_score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)
    latency_ms: float = Field(ge=0.0, le=86_400_000.0, allow_inf_nan=False, strict=True)
    task_type: Capability | None = None


class AgentQuery(Strict):
    """The capability query's parameters. In the query string a list is comma-separated
    (`languages=python,go`, or the parameter repeated); an empty value is an empty list."""

    task_type: Capability | None = optional()
    languages: CapabilityList = Field(default_factory=list)
    specializations: CapabilityList = Field(default_factory=list)
    max_utilization: Fraction | None = optional()
    min_success_rate: Fraction | None = optional()
    limit: int = Field(10, ge=1, le=100)


class BreakerCommand(Strict):
    state: Literal["forced_open", "disabled", "automatic"]
    reason: Annotated[str, StringConstraints(max_length=200)] | None = None


# ---- answers ---------------------------------------------------------------------------------


class Load(BaseModel):
    active_tasks: int
    queued_tasks: int
    utilization: float = Field(description="active_tasks / max_concurrent_tasks, capped at 1")


class Performance(BaseModel):
    task_count: int
    success_rate: float | None = Field(description="null until the first task outcome")
    average_quality: float | None
    average_latency_ms: float | None


class Agent(BaseModel):
    agent_id: str
    name: str
    model_family: str
    capabilities: Capabilities
    max_concurrent_tasks: int
    status: Literal["active", "unresponsive"]
    registered_at: datetime
    last_heartbeat_at: datetime
    updated_at: datetime
    version: int = Field(
        description="change watermark, moved by every write (heartbeats, load, performance too)"
    )
    revision: int = Field(
        ge=1,
        description="the ETag: +1 per change of name, model_family, capabilities or "
        "max_concurrent_tasks; send it in If-Match to patch",
    )
    load: Load
    performance: Performance


class QueryResult(BaseModel):
    agent: Agent
    match_score: float = Field(ge=0, le=1)
    match_reasons: list[str]


class QueryAnswer(BaseModel):
    results: list[QueryResult]


class PerformanceAnswer(BaseModel):
    agent_id: str
    event_id: str
    counted: bool = Field(description="false when this event_id was already counted")
    performance: Performance


class HeartbeatAnswer(BaseModel):
    agent_id: str
    status: Literal["active", "unresponsive"]
    last_heartbeat_at: datetime
    version: int


class Stats(BaseModel):
    total_agents: int
    active_agents: int
    idle_agents: int
    average_utilization: float
    average_success_rate: float | None


class Accepted(BaseModel):
    op_id: str
    status: Literal["pending"]


class Operation(BaseModel):
    op_id: str
    status: Literal["pending", "applied", "rejected"]
    kind: str | None = None
    reason: str | None = None


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = None
