"""The provisional effect of a journaled write (read-your-writes from the replica) and the
registry's error types, exactly: every field a write sets, every revision rule, every refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.apply import PROVISIONAL_VERSION, apply_write
from proxy.registry.requests import WriteKind

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)


def base(**changes: Any) -> AgentRecord:
    fields: dict[str, Any] = {
        "tenant_id": "t",
        "agent_id": "a1",
        "name": "first",
        "model_family": "fam",
        "task_types": ("summarize",),
        "languages": ("en",),
        "specializations": ("legal",),
        "max_concurrent_tasks": 4,
        "active_tasks": 1,
        "queued_tasks": 2,
        "load_observed_at": EARLIER,
        "registered_at": EARLIER,
        "last_heartbeat_at": EARLIER,
        "updated_at": EARLIER,
        "version": 41,
        "deleted_at": None,
        "task_count": 2,
        "success_count": 1,
        "quality_sum": 1.0,
        "latency_ms_sum": 20.0,
        "revision": 5,
    }
    fields.update(changes)
    return AgentRecord(**fields)


REGISTER = {
    "body": {
        "agent_id": "a1",
        "name": "new",
        "model_family": "fam2",
        "capabilities": {"task_types": ["code", "review"]},
    }
}


def test_provisional_version_is_zero() -> None:
    assert PROVISIONAL_VERSION == 0


def test_register_a_new_agent_sets_every_field() -> None:
    rec = apply_write("register", "t", REGISTER, None, NOW)
    assert rec == AgentRecord(
        tenant_id="t",
        agent_id="a1",
        name="new",
        model_family="fam2",
        task_types=("code", "review"),
        languages=(),
        specializations=(),
        max_concurrent_tasks=10,
        active_tasks=0,
        queued_tasks=0,
        load_observed_at=None,
        registered_at=NOW,
        last_heartbeat_at=NOW,
        updated_at=NOW,
        version=0,
        deleted_at=None,
        task_count=0,
        success_count=0,
        quality_sum=0.0,
        latency_ms_sum=0.0,
        revision=1,
    )


def test_register_with_every_optional_field() -> None:
    payload = {
        "body": {
            **REGISTER["body"],
            "max_concurrent_tasks": 3,
            "capabilities": {
                "task_types": ["code"],
                "languages": ["go", "rust"],
                "specializations": ["infra"],
            },
        }
    }
    rec = apply_write("register", "t", payload, None, NOW)
    assert rec is not None
    assert (rec.languages, rec.specializations, rec.max_concurrent_tasks) == (
        ("go", "rust"),
        ("infra",),
        3,
    )


def test_register_over_a_live_agent_is_a_duplicate() -> None:
    with pytest.raises(errors.DuplicateAgent) as caught:
        apply_write("register", "t", REGISTER, base(), NOW)
    assert caught.value.detail == "agent 'a1' is already registered"


def test_re_registration_continues_the_revision() -> None:
    rec = apply_write("register", "t", REGISTER, base(deleted_at=EARLIER, revision=5), NOW)
    assert rec is not None
    assert rec.revision == 6
    assert rec.deleted_at is None
    assert rec.task_count == 0


def test_unregister() -> None:
    assert apply_write("unregister", "t", {"agent_id": "a1"}, None, NOW) is None
    gone = base(deleted_at=EARLIER)
    assert apply_write("unregister", "t", {"agent_id": "a1"}, gone, NOW) is gone
    tomb = apply_write("unregister", "t", {"agent_id": "a1"}, base(), NOW)
    assert tomb == base().evolve(deleted_at=NOW, updated_at=NOW, version=0)


@pytest.mark.parametrize("kind", ["patch", "load", "heartbeat", "performance"])
@pytest.mark.parametrize("current", [None, base(deleted_at=EARLIER)], ids=["absent", "deleted"])
def test_writes_to_an_absent_agent_are_not_found(kind: str, current: AgentRecord | None) -> None:
    with pytest.raises(errors.NotFound) as caught:
        apply_write(kind, "t", {"agent_id": "a1", "body": {}}, current, NOW)
    assert caught.value.detail == "agent 'a1' is not registered"


def test_patch_that_changes_a_value_moves_the_revision() -> None:
    rec = apply_write("patch", "t", {"body": {"name": "renamed"}}, base(), NOW)
    assert rec == base().evolve(name="renamed", updated_at=NOW, version=0, revision=6)


def test_patch_to_the_same_values_keeps_the_revision() -> None:
    body = {"name": "first", "model_family": "fam", "max_concurrent_tasks": 4}
    rec = apply_write("patch", "t", {"body": body}, base(), NOW)
    assert rec == base().evolve(updated_at=NOW, version=0, revision=5)


def test_patch_of_each_field_counts() -> None:
    for body in ({"model_family": "other"}, {"max_concurrent_tasks": 9}):
        rec = apply_write("patch", "t", {"body": body}, base(), NOW)
        assert rec is not None and rec.revision == 6


def test_patch_of_capabilities() -> None:
    caps = {"task_types": ["summarize"], "languages": ["en"], "specializations": ["legal"]}
    same = apply_write("patch", "t", {"body": {"capabilities": caps}}, base(), NOW)
    assert same is not None and same.revision == 5
    new_caps = {"task_types": ["code"]}
    rec = apply_write("patch", "t", {"body": {"capabilities": new_caps}}, base(), NOW)
    assert rec is not None
    assert (rec.task_types, rec.languages, rec.specializations) == (("code",), (), ())
    assert rec.revision == 6


def test_patch_if_match() -> None:
    ok = apply_write("patch", "t", {"if_match": 5, "body": {"name": "x"}}, base(), NOW)
    assert ok is not None and ok.name == "x"
    with pytest.raises(errors.PreconditionFailed) as caught:
        apply_write("patch", "t", {"if_match": 4, "body": {"name": "x"}}, base(), NOW)
    assert caught.value.detail == "If-Match revision 4 does not match current revision 5"


def test_load_report() -> None:
    body = {"active_tasks": 3, "queued_tasks": 0, "observed_at": NOW.isoformat()}
    rec = apply_write("load", "t", {"body": body}, base(), NOW)
    assert rec == base().evolve(
        active_tasks=3, queued_tasks=0, load_observed_at=NOW, updated_at=NOW, version=0
    )


def test_an_older_load_report_is_ignored_and_an_equal_one_applies() -> None:
    older = {
        "active_tasks": 3,
        "queued_tasks": 0,
        "observed_at": (EARLIER - timedelta(1)).isoformat(),
    }
    current = base()
    assert apply_write("load", "t", {"body": older}, current, NOW) is current
    same_time = {"active_tasks": 3, "queued_tasks": 0, "observed_at": EARLIER.isoformat()}
    rec = apply_write("load", "t", {"body": same_time}, current, NOW)
    assert rec is not None and rec.active_tasks == 3
    first = {"active_tasks": 2, "queued_tasks": 1, "observed_at": EARLIER.isoformat()}
    rec = apply_write("load", "t", {"body": first}, base(load_observed_at=None), NOW)
    assert rec is not None and (rec.active_tasks, rec.load_observed_at) == (2, EARLIER)


def test_heartbeat_never_goes_back() -> None:
    later = apply_write("heartbeat", "t", {"observed_at": NOW.isoformat()}, base(), NOW)
    assert later == base().evolve(last_heartbeat_at=NOW, updated_at=NOW, version=0)
    old = (EARLIER - timedelta(hours=1)).isoformat()
    kept = apply_write("heartbeat", "t", {"observed_at": old}, base(), NOW)
    assert kept is not None and kept.last_heartbeat_at == EARLIER


@pytest.mark.parametrize(("success", "successes"), [(True, 2), (False, 1)])
def test_performance_report(success: bool, successes: int) -> None:
    body = {"success": success, "quality_score": 0.5, "latency_ms": 7.0}
    rec = apply_write("performance", "t", {"body": body}, base(), NOW)
    assert rec == base().evolve(
        task_count=3,
        success_count=successes,
        quality_sum=1.5,
        latency_ms_sum=27.0,
        updated_at=NOW,
        version=0,
    )


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"^unknown write kind 'rename'$"):
        apply_write("rename", "t", {}, base(), NOW)


def test_an_admin_record_changes_no_agent() -> None:
    with pytest.raises(ValueError, match=r"^'admin' writes change no agent$"):
        apply_write(WriteKind.ADMIN, "t", {"action": "breaker", "target": "db"}, base(), NOW)


def test_a_kind_is_taken_as_its_member_or_its_stored_string() -> None:
    payload = {"agent_id": "a1", "body": {"name": "renamed"}}
    by_string = apply_write("patch", "t", payload, base(), NOW)
    assert apply_write(WriteKind.PATCH, "t", payload, base(), NOW) == by_string


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "status", "slug", "title"),
    [
        (errors.RegistryError, 400, "bad-request", "Bad request"),
        (errors.NotFound, 404, "not-found", "Not found"),
        (errors.DuplicateAgent, 409, "duplicate-agent", "Agent already registered"),
        (errors.RegistryFull, 409, "registry-full", "Registry is full"),
        (errors.PreconditionFailed, 412, "precondition-failed", "Version does not match If-Match"),
        (
            errors.IdempotencyMismatch,
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused with a different request",
        ),
        (errors.Unprocessable, 422, "invalid-request", "Request has invalid fields"),
        (errors.DeadlineExceeded, 504, "deadline-exceeded", "Deadline exceeded"),
    ],
)
def test_error_types(cls: type[errors.RegistryError], status: int, slug: str, title: str) -> None:
    exc = cls("what happened")
    assert exc.detail == "what happened"
    assert str(exc) == "what happened"
    assert exc.headers == {}
    assert exc.extensions == {}
    assert exc.slug == slug
    assert exc.type == "https://registry-proxy.dev/problems/" + slug
    assert exc.status == status
    assert exc.title == title


def test_headers_and_extensions_are_kept() -> None:
    exc = errors.RegistryError("x", headers={"A": "1"}, extensions={"op_id": "o"})
    assert (exc.headers, exc.extensions) == ({"A": "1"}, {"op_id": "o"})


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, "1"), (0.4, "1"), (1.0, "1"), (1.01, "2"), (1.5, "2"), (2.0, "2"), (7.3, "8")],
)
@pytest.mark.parametrize("cls", [errors.Unavailable, errors.JournalDiskFull, errors.Overloaded])
def test_retry_after_is_whole_seconds_rounded_up(
    cls: type[errors.Unavailable] | type[errors.Overloaded], retry_after: float, header: str
) -> None:
    exc = cls("busy", retry_after=retry_after)
    assert exc.headers == {"Retry-After": header}
    assert exc.retry_after == retry_after
    assert exc.status == 503


def test_unavailable_defaults_to_one_second() -> None:
    for exc in (errors.Unavailable("x"), errors.Overloaded("x")):
        assert exc.retry_after == 1.0
        assert exc.headers == {"Retry-After": "1"}


def test_the_503_slugs() -> None:
    assert (errors.Unavailable.slug, errors.Unavailable.title) == (
        "database-unavailable",
        "Database unavailable",
    )
    assert (errors.JournalDiskFull.slug, errors.JournalDiskFull.title) == (
        "journal-disk-full",
        "Local journal disk full",
    )
    assert (errors.Overloaded.slug, errors.Overloaded.title) == ("overloaded", "Sidecar overloaded")
    assert issubclass(errors.JournalDiskFull, errors.Unavailable)


def test_the_503_errors_keep_their_detail() -> None:
    for cls in (errors.Unavailable, errors.JournalDiskFull, errors.Overloaded):
        exc = cls("why it was refused", retry_after=2.0)
        assert exc.detail == "why it was refused"
        assert str(exc) == "why it was refused"


# -- validators that run on every request ----------------------------------------------------


def test_duplicate_capabilities_are_refused_with_the_reason() -> None:
    from pydantic import ValidationError

    from proxy.registry.models import AgentQuery

    with pytest.raises(ValidationError) as caught:
        AgentQuery(languages=["en", "en"])
    assert caught.value.errors()[0]["msg"] == "Value error, values must be unique"
    assert AgentQuery(languages=["en", "fr"]).languages == ["en", "fr"]


def test_a_report_may_be_up_to_five_minutes_ahead() -> None:
    from pydantic import ValidationError

    from proxy.registry.models import HeartbeatRequest

    def at(delta: timedelta) -> str:
        return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")

    assert HeartbeatRequest(observed_at=at(timedelta(minutes=4))).observed_at is not None
    assert HeartbeatRequest(observed_at=at(-timedelta(hours=1))).observed_at is not None
    with pytest.raises(ValidationError) as caught:
        HeartbeatRequest(observed_at=at(timedelta(minutes=6)))
    assert caught.value.errors()[0]["msg"] == (
        "Value error, must not be more than 5 minutes in the future"
    )
