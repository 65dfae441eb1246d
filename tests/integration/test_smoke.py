from __future__ import annotations

from tests.conftest import Api, agent_body


async def test_register_get_query_roundtrip(api: Api) -> None:
    status, body, headers = await api.call("POST", "/v1/agents", agent_body("a1"))
    assert status == 201, body
    assert headers["X-Registry-Source"] == "database"
    assert body["version"] >= 1
    assert body["revision"] == 1
    status, body, headers = await api.call("GET", "/v1/agents/a1")
    assert status == 200
    assert headers["ETag"] == f'"{body["revision"]}"'
    status, body, _ = await api.call("GET", "/v1/agents?task_type=code")
    assert status == 200
    assert [r["agent"]["agent_id"] for r in body["results"]] == ["a1"]
