"""The replica's records are kept out of the cyclic collector's walks (`proxy.store.untracked`),
which is only sound while a record can never be part of a reference cycle."""

from __future__ import annotations

import gc
import weakref
from datetime import UTC, datetime

from proxy.registry.agent import AgentRecord
from proxy.registry.matching import rank
from proxy.registry.models import AgentQuery
from proxy.store.replica import Replica
from proxy.store.untracked import untrack
from tests.unit.test_replica_overlay import T, base, post

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Nothing of these types can hold a reference to an AgentRecord.
_ATOMS = (str, bytes, int, float, bool, type(None), datetime)


def _reachable(rec: AgentRecord) -> list[object]:
    seen: dict[int, object] = {}
    todo: list[object] = list(gc.get_referents(rec))
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def test_rows_and_folded_views_the_replica_keeps_are_not_tracked() -> None:
    rep = Replica()
    row = base(10)
    assert gc.is_tracked(row)
    rep.replace_all([T], [row])
    assert rep.get(T, "a") is row
    assert not gc.is_tracked(row)

    rep.add_pending(T, "a", post("op-1", "ev-1"))
    view = rep.get(T, "a")
    assert view is not None and view is not row and view.task_count == 1
    assert not gc.is_tracked(view)


def test_a_record_with_every_cache_filled_reaches_only_atoms_and_tuples_of_them() -> None:
    rep = Replica()
    rep.replace_all([T], [base(10, task_count=3)])
    q = AgentQuery(task_type="code")
    found = rep.query(T, q)
    assert [r.agent_id for r in found] == ["a"]
    rank(found, q, NOW, ordered=True)  # fills the match facts, ranked parts and document
    rec = found[0]
    reached = _reachable(rec)
    assert any(isinstance(o, bytes) for o in reached)  # the caches were filled and walked
    strays = [o for o in reached if not isinstance(o, (*_ATOMS, tuple))]
    assert strays == [], f"a record reaches {sorted({type(o).__name__ for o in strays})}"


def test_an_untracked_object_is_still_freed_with_its_last_reference() -> None:
    class Slotted:
        __slots__ = ("__weakref__", "value")

    obj = Slotted()
    obj.value = ("a", 1)
    untrack(obj)
    untrack(obj)  # a second time changes nothing
    assert not gc.is_tracked(obj)
    gone = weakref.ref(obj)
    del obj
    assert gone() is None
