"""The registry's data shapes: request bodies (validated strictly) and answers.

The same models validate requests and generate the OpenAPI document, so the two cannot drift.
Nothing here does I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_LIST_ITEMS = 32
MAX_ACTIVE_TASKS = 1_000_000
MAX_CONCURRENT_TASKS = 10_000


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    return value


def _capability(value: str) -> str:
    # Query strings list capabilities separated by commas, so a comma cannot be part of one.
    if "," in value:
        raise ValueError("must not contain a comma")
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    return value


AgentId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Capability = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_capability)
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_printable)]
ModelFamily = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_printable)
]


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("values must be unique")
    return values


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# A report from the future would win every last-writer-wins comparison until that date.
_MAX_CLOCK_SKEW = timedelta(minutes=5)


def _sane_time(value: datetime) -> datetime:
    if value < _EARLIEST:
        raise ValueError("must not be before 2000-01-01")
    if value > datetime.now(UTC) + _MAX_CLOCK_SKEW:
        raise ValueError("must not be more than 5 minutes in the future")
    return value


Timestamp = Annotated[AwareDatetime, AfterValidator(_sane_time)]

CapabilityList = Annotated[
    list[Capability], Field(max_length=MAX_LIST_ITEMS), AfterValidator(_unique)
]


class Strict(BaseModel):
    """Unknown fields are an error: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=False)


class Capabilities(Strict):
    task_types: Annotated[
        list[Capability], Field(min_length=1, max_length=MAX_LIST_ITEMS), AfterValidator(_unique)
    ]
    languages: CapabilityList = Field(default_factory=list)
    specializations: CapabilityList = Field(default_factory=list)


class RegisterRequest(Strict):
    agent_id: AgentId
    name: Name
    model_family: ModelFamily
    capabilities: Capabilities
    max_concurrent_tasks: int = Field(10, ge=1, le=MAX_CONCURRENT_TASKS, strict=True)


class PatchRequest(Strict):
    name: Name | None = None
    model_family: ModelFamily | None = None
    capabilities: Capabilities | None = None
    max_concurrent_tasks: int | None = Field(None, ge=1, le=MAX_CONCURRENT_TASKS, strict=True)

    @model_validator(mode="after")
    def _not_empty(self) -> PatchRequest:
        if not self.model_fields_set:
            raise ValueError("a patch must change at least one field")
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class LoadRequest(Strict):
    active_tasks: int = Field(ge=0, le=MAX_ACTIVE_TASKS, strict=True)
    queued_tasks: int = Field(ge=0, le=MAX_ACTIVE_TASKS, strict=True)
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
    task_type: Capability | None = None
    languages: CapabilityList = Field(default_factory=list)
    specializations: CapabilityList = Field(default_factory=list)
    max_utilization: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    min_success_rate: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
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
