"""The HTTP contract of the bundled server, against Toxiproxy v2.12.0's observed behaviour."""

from __future__ import annotations

import json
import re
import socket

import aiohttp
import pytest

from chaos.toxiproxy.server import ToxiproxyServer
from chaos.toxiproxy.testing import free_port, serve

from .support import Api, Client, EchoServer, eventually, port_of

TEXT = "text/plain; charset=utf-8"
REQUEST_ID = re.compile(r"[0-9a-v]{20}\Z")


def proxy_body(name: str, listen: str, upstream: str, enabled: bool = True) -> bytes:
    return (
        f'{{"name":"{name}","listen":"{listen}","upstream":"{upstream}",'
        f'"enabled":{"true" if enabled else "false"},"Logger":{{}},"toxics":[]}}'
    ).encode()


def error_body(message: str, status: int) -> bytes:
    return json.dumps({"error": message, "status": status}, separators=(",", ":")).encode() + b"\n"


# --- general conventions ------------------------------------------------------------------------


async def test_version_is_hand_written_json_with_charset(api: Api) -> None:
    status, body, headers = await api.call("GET", "/version")
    assert status == 200
    assert body == b'{"version": "2.12.0"}\n'
    assert headers["Content-Type"] == "application/json;charset=utf-8"
    assert REQUEST_ID.match(headers["X-Toxiproxy-Request-Id"])
    assert "Server" not in headers


async def test_request_ids_differ_per_request(api: Api) -> None:
    ids = {(await api.call("GET", "/proxies"))[2]["X-Toxiproxy-Request-Id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("path", ["/version", "/proxies", "/reset"])
async def test_browsers_are_refused_on_every_route(api: Api, path: str) -> None:
    method = "POST" if path == "/reset" else "GET"
    status, body, headers = await api.call(
        method, path, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}
    )
    assert status == 403
    assert body == b"User agent not allowed\n"
    assert headers["Content-Type"] == TEXT
    assert "X-Toxiproxy-Request-Id" in headers


async def test_browser_check_is_a_prefix_match(api: Api) -> None:
    status, _, _ = await api.call("GET", "/version", headers={"User-Agent": "curl Mozilla/5.0"})
    assert status == 200


@pytest.mark.parametrize("path", ["/nope", "/proxies/", "/version/", "/proxies/a/b", "/"])
async def test_unknown_paths_are_go_404s(api: Api, path: str) -> None:
    status, body, headers = await api.call("GET", path)
    assert status == 404
    assert body == b"404 page not found\n"
    assert headers["Content-Type"] == TEXT
    assert "X-Toxiproxy-Request-Id" not in headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/proxies"),
        ("DELETE", "/proxies"),
        ("GET", "/reset"),
        ("DELETE", "/reset"),
        ("HEAD", "/version"),
        ("POST", "/version"),
        ("GET", "/populate"),
        ("PUT", "/proxies/x"),
        ("PUT", "/proxies/x/toxics"),
        ("HEAD", "/proxies/x/toxics/y"),
    ],
)
async def test_known_paths_with_other_methods_are_bare_405s(
    api: Api, method: str, path: str
) -> None:
    status, body, headers = await api.call(method, path)
    assert status == 405
    assert body == b""
    assert "Content-Type" not in headers
    assert "X-Toxiproxy-Request-Id" not in headers


async def test_unclean_paths_redirect_like_gorilla_mux(api: Api) -> None:
    status, body, headers = await api.call("GET", "//version")
    assert (status, body, headers["Location"]) == (301, b"", "/version")
    status, _, headers = await api.call("GET", "/proxies/../version?x=1")
    assert (status, headers["Location"]) == (301, "/version?x=1")


async def test_names_match_on_the_decoded_path(api: Api, echo: EchoServer) -> None:
    await api.create_proxy("a b", echo.address)
    status, body, _ = await api.call("GET", "/proxies/a%20b")
    assert status == 200
    assert json.loads(body)["name"] == "a b"


# --- proxies ------------------------------------------------------------------------------------


async def test_proxy_index_is_an_object_sorted_by_name(api: Api, echo: EchoServer) -> None:
    status, body, headers = await api.call("GET", "/proxies")
    assert (status, body, headers["Content-Type"]) == (200, b"{}", "application/json")
    for name in ("zeta", "alpha", "mid"):
        await api.create_proxy(name, echo.address, enabled=False)
    _, body, _ = await api.call("GET", "/proxies")
    assert list(json.loads(body)) == ["alpha", "mid", "zeta"]
    assert body.startswith(b'{"alpha":{"name":"alpha","listen":"127.0.0.1:0"')


async def test_create_returns_201_with_the_bound_address(api: Api, echo: EchoServer) -> None:
    status, body, headers = await api.call(
        "POST", "/proxies", {"name": "p", "listen": "localhost:0", "upstream": echo.address}
    )
    assert status == 201
    assert headers["Content-Type"] == "application/json"
    assert "X-Toxiproxy-Request-Id" in headers
    listen = json.loads(body)["listen"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", listen)
    assert port_of({"listen": listen}) != 0
    assert body == proxy_body("p", listen, echo.address)


async def test_create_defaults_enabled_and_ignores_extra_fields(api: Api) -> None:
    body = {"name": "p", "listen": "127.0.0.1:0", "upstream": "x:1", "toxics": [{"a": 1}]}
    created = await api.json("POST", "/proxies", body, expect=201)
    assert created["enabled"] is True
    assert created["toxics"] == []


async def test_create_reads_only_the_first_value_with_case_insensitive_fields(api: Api) -> None:
    raw = b'{"NAME":"p","Listen":"127.0.0.1:0","UPSTREAM":"u:1","enabled":false} trailing {'
    status, body, _ = await api.call("POST", "/proxies", raw=raw)
    assert status == 201
    assert body == proxy_body("p", "127.0.0.1:0", "u:1", enabled=False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "bad request body: EOF"),
        (b"   ", "bad request body: EOF"),
        (b'{"name":', "bad request body: unexpected EOF"),
        (
            b"{nope}",
            "bad request body: invalid character 'n' looking for beginning of object key string",
        ),
        (b"x", "bad request body: invalid character 'x' looking for beginning of value"),
        (
            b'{"name":"p","upstream":5}',
            "bad request body: json: cannot unmarshal number into Go struct field "
            "Proxy.upstream of type string",
        ),
        (
            b'{"name":"p","upstream":"u:1","enabled":"yes"}',
            "bad request body: json: cannot unmarshal string into Go struct field "
            "Proxy.enabled of type bool",
        ),
        (
            b"[1]",
            "bad request body: json: cannot unmarshal array into Go value of type toxiproxy.Proxy",
        ),
        (b'{"upstream":"u:1"}', "missing required field: name"),
        (b'{"name":"","upstream":"u:1"}', "missing required field: name"),
        (b'{"name":"p"}', "missing required field: upstream"),
        (b"null", "missing required field: name"),
    ],
)
async def test_create_rejects_bad_bodies_with_go_messages(
    api: Api, raw: bytes, message: str
) -> None:
    status, body, headers = await api.call("POST", "/proxies", raw=raw)
    assert status == 400
    assert body == error_body(message, 400)
    assert headers["Content-Type"] == TEXT
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_duplicate_name_is_409_before_any_bind(api: Api, echo: EchoServer) -> None:
    await api.create_proxy("p", echo.address)
    # The listen address is the echo server's own port: a bind would fail with 500.
    status, body, _ = await api.call(
        "POST", "/proxies", {"name": "p", "listen": echo.address, "upstream": echo.address}
    )
    assert status == 409
    assert body == error_body("proxy already exists", 409)


async def test_bind_failure_is_500_and_creates_nothing(api: Api, echo: EchoServer) -> None:
    status, body, _ = await api.call(
        "POST", "/proxies", {"name": "p", "listen": echo.address, "upstream": echo.address}
    )
    assert status == 500
    assert body == error_body(f"listen tcp {echo.address}: bind: address already in use", 500)
    status, body, _ = await api.call(
        "POST", "/proxies", {"name": "q", "listen": "foo", "upstream": echo.address}
    )
    assert body == error_body("listen tcp: address foo: missing port in address", 500)
    assert await api.json("GET", "/proxies") == {}


async def test_disabled_proxy_keeps_an_unresolved_listen(api: Api) -> None:
    created = await api.json(
        "POST",
        "/proxies",
        {"name": "p", "listen": "nonsense", "upstream": "u:1", "enabled": False},
        expect=201,
    )
    assert created["listen"] == "nonsense"
    status, body, _ = await api.call("POST", "/proxies/p", {"enabled": True})
    assert status == 500
    assert body == error_body("address nonsense: missing port in address", 500)


async def test_show_and_delete(api: Api, echo: EchoServer) -> None:
    created = await api.create_proxy("p", echo.address)
    status, body, headers = await api.call("GET", "/proxies/p")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == created
    status, body, headers = await api.call("DELETE", "/proxies/p")
    assert (status, body) == (204, b"")
    assert "Content-Type" not in headers
    for method in ("GET", "DELETE", "POST"):
        status, body, _ = await api.call(method, "/proxies/p", {"enabled": True})
        assert (status, body) == (404, error_body("proxy not found", 404))


async def test_update_with_post_or_patch_merges_fields(api: Api, echo: EchoServer) -> None:
    created = await api.create_proxy("p", echo.address)
    disabled = await api.json("PATCH", "/proxies/p", {"enabled": False, "name": "renamed"})
    assert disabled == {**created, "enabled": False}
    enabled = await api.json("POST", "/proxies/p", {"enabled": True})
    # Re-enabling rebinds the same concrete port.
    assert enabled == created
    status, body, _ = await api.call("POST", "/proxies/p", raw=b"")
    assert (status, body) == (400, error_body("bad request body: EOF", 400))


async def test_update_with_an_unresolvable_listen_is_500(api: Api, echo: EchoServer) -> None:
    await api.create_proxy("p", echo.address)
    status, body, _ = await api.call("PATCH", "/proxies/p", {"listen": "bogus"})
    assert (status, body) == (500, error_body("address bogus: missing port in address", 500))


async def test_update_to_a_taken_port_leaves_the_proxy_disabled(api: Api, echo: EchoServer) -> None:
    await api.create_proxy("p", echo.address)
    status, body, _ = await api.call("POST", "/proxies/p", {"listen": echo.address})
    assert status == 500
    assert body == error_body(f"listen tcp {echo.address}: bind: address already in use", 500)
    shown = await api.json("GET", "/proxies/p")
    assert (shown["enabled"], shown["listen"]) == (False, echo.address)


# --- toxics -------------------------------------------------------------------------------------


async def test_toxic_create_answers_200_with_defaults(api: Api, echo: EchoServer) -> None:
    await api.create_proxy("p", echo.address)
    status, body, headers = await api.call(
        "POST", "/proxies/p/toxics", {"type": "latency", "attributes": {"latency": 100}}
    )
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert body == (
        b'{"attributes":{"latency":100,"jitter":0},"name":"latency_downstream",'
        b'"type":"latency","stream":"downstream","toxicity":1}'
    )


@pytest.mark.parametrize(
    ("toxic", "expected"),
    [
        (
            {"type": "noop", "stream": "UPSTREAM", "toxicity": 0.5},
            b'{"attributes":{},"name":"noop_UPSTREAM","type":"noop","stream":"UPSTREAM",'
            b'"toxicity":0.5}',
        ),
        (
            {"type": "latency", "name": "s", "toxicity": 0.1, "attributes": None},
            b'{"attributes":{"latency":0,"jitter":0},"name":"s",'
            b'"type":"latency","stream":"downstream","toxicity":0.1}',
        ),
        (
            {"type": "slicer", "attributes": {"average_size": 3}},
            b'{"attributes":{"average_size":3,"size_variation":0,"delay":0},'
            b'"name":"slicer_downstream","type":"slicer","stream":"downstream","toxicity":1}',
        ),
        (
            {"type": "bandwidth", "toxicity": 5, "attributes": {"rate": 7, "bogus": 1}},
            b'{"attributes":{"rate":7},"name":"bandwidth_downstream","type":"bandwidth",'
            b'"stream":"downstream","toxicity":5}',
        ),
        (
            {"type": "timeout", "toxicity": -1, "attributes": {"TIMEOUT": -3}},
            b'{"attributes":{"timeout":-3},"name":"timeout_downstream","type":"timeout",'
            b'"stream":"downstream","toxicity":-1}',
        ),
        (
            {"type": "limit_data", "toxicity": 1e-7},
            b'{"attributes":{"bytes":0},"name":"limit_data_downstream","type":"limit_data",'
            b'"stream":"downstream","toxicity":1e-7}',
        ),
    ],
)
async def test_toxic_shapes(api: Api, toxic: dict[str, object], expected: bytes) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    status, body, _ = await api.call("POST", "/proxies/p/toxics", toxic)
    assert (status, body) == (200, expected)


@pytest.mark.parametrize(
    ("toxic", "status", "message"),
    [
        (
            {"type": "latency", "stream": "sideways"},
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            {"type": "latency", "stream": ""},
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            {"type": "nope", "stream": "bad"},
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        ({"type": "down"}, 400, "invalid toxic type"),
        ({"stream": "upstream"}, 400, "invalid toxic type"),
        (
            {"type": "latency", "attributes": {"latency": 1.5}},
            400,
            "bad request body: json: cannot unmarshal number 1.5 into Go struct field "
            "LatencyToxic.attributes.latency of type int64",
        ),
        (
            {"type": "slicer", "attributes": {"delay": "x"}},
            400,
            "bad request body: json: cannot unmarshal string into Go struct field "
            "SlicerToxic.attributes.delay of type int",
        ),
        (
            # reset_peer's Go struct is ResetToxic, unlike its type name.
            {"type": "reset_peer", "attributes": {"timeout": "x"}},
            400,
            "bad request body: json: cannot unmarshal string into Go struct field "
            "ResetToxic.attributes.timeout of type int64",
        ),
        (
            {"type": "latency", "attributes": 5},
            400,
            "bad request body: json: cannot unmarshal number into Go struct field "
            "ToxicWrapper.attributes of type toxics.NoopToxic",
        ),
        (
            {"type": "latency", "toxicity": "high"},
            400,
            "bad request body: json: cannot unmarshal string into Go struct field "
            "ToxicWrapper.toxicity of type float32",
        ),
        (
            {"type": "latency", "toxicity": 1e39},
            400,
            "bad request body: json: cannot unmarshal number 1e+39 into Go struct field "
            "ToxicWrapper.toxicity of type float32",
        ),
    ],
)
async def test_toxic_create_errors_in_order(
    api: Api, toxic: dict[str, object], status: int, message: str
) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    got, body, headers = await api.call("POST", "/proxies/p/toxics", toxic)
    assert (got, body) == (status, error_body(message, status))
    assert headers["Content-Type"] == TEXT


async def test_toxic_create_needs_the_proxy_first(api: Api) -> None:
    status, body, _ = await api.call("POST", "/proxies/nope/toxics", raw=b"")
    assert (status, body) == (404, error_body("proxy not found", 404))
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    status, body, _ = await api.call("POST", "/proxies/p/toxics", raw=b"")
    assert (status, body) == (400, error_body("bad request body: EOF", 400))


async def test_duplicate_toxic_name_spans_streams_and_precedes_attributes(api: Api) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    await api.add_toxic("p", type="latency", name="t", stream="upstream")
    status, body, _ = await api.call(
        "POST",
        "/proxies/p/toxics",
        {"type": "latency", "name": "t", "stream": "downstream", "attributes": {"latency": 1.5}},
    )
    assert (status, body) == (409, error_body("toxic already exists", 409))


async def test_toxics_list_upstream_first_in_insertion_order(api: Api) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    assert await api.json("GET", "/proxies/p/toxics") == []
    for name, stream in (("d1", "downstream"), ("u1", "upstream"), ("d2", "downstream")):
        await api.add_toxic("p", type="noop", name=name, stream=stream)
    await api.add_toxic("p", type="noop", name="u2", stream="Upstream")
    names = [t["name"] for t in await api.json("GET", "/proxies/p/toxics")]
    assert names == ["u1", "u2", "d1", "d2"]
    proxy = await api.json("GET", "/proxies/p")
    assert [t["name"] for t in proxy["toxics"]] == names


async def test_toxic_show_and_delete(api: Api) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    created = await api.add_toxic("p", type="latency", attributes={"latency": 5})
    assert await api.json("GET", "/proxies/p/toxics/latency_downstream") == created
    status, body, _ = await api.call("DELETE", "/proxies/p/toxics/latency_downstream")
    assert (status, body) == (204, b"")
    for method in ("GET", "DELETE", "PATCH"):
        status, body, _ = await api.call(method, "/proxies/p/toxics/latency_downstream", {})
        assert (status, body) == (404, error_body("toxic not found", 404))
    status, body, _ = await api.call("GET", "/proxies/nope/toxics/x")
    assert (status, body) == (404, error_body("proxy not found", 404))


async def test_toxic_update_merges_attributes_and_keeps_identity(api: Api) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    await api.add_toxic(
        "p",
        type="latency",
        stream="upstream",
        toxicity=0.5,
        attributes={"latency": 10, "jitter": 3},
    )
    updated = await api.json(
        "PATCH",
        "/proxies/p/toxics/latency_upstream",
        {"attributes": {"latency": 20}, "name": "x", "type": "bandwidth", "stream": "downstream"},
    )
    assert updated == {
        "attributes": {"latency": 20, "jitter": 3},
        "name": "latency_upstream",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 0.5,
    }
    updated = await api.json("POST", "/proxies/p/toxics/latency_upstream", {"toxicity": 0.25})
    assert updated["toxicity"] == 0.25
    assert updated["attributes"] == {"latency": 20, "jitter": 3}
    status, body, _ = await api.call("PATCH", "/proxies/p/toxics/latency_upstream", raw=b"")
    assert (status, body) == (400, error_body("bad request body: EOF", 400))


async def test_toxic_update_partially_applies_before_a_type_error(api: Api) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    await api.add_toxic("p", type="latency", attributes={"latency": 10, "jitter": 3})
    status, body, _ = await api.call(
        "PATCH",
        "/proxies/p/toxics/latency_downstream",
        {"attributes": {"jitter": "x", "latency": 99}, "toxicity": 0.5},
    )
    assert status == 400
    assert body == error_body(
        "bad request body: json: cannot unmarshal string into Go struct field "
        "LatencyToxic.attributes.jitter of type int64",
        400,
    )
    toxic = await api.json("GET", "/proxies/p/toxics/latency_downstream")
    assert toxic["attributes"] == {"latency": 99, "jitter": 3}
    assert toxic["toxicity"] == 1


@pytest.mark.parametrize(
    ("toxic", "update", "message"),
    [
        ({"type": "bandwidth", "attributes": {"rate": -1}}, None, "rate must not be negative"),
        (
            {"type": "slicer", "attributes": {"average_size": 0}},
            None,
            "average_size must be greater than 0",
        ),
        (
            {"type": "slicer", "attributes": {"average_size": 5, "size_variation": -5}},
            None,
            "average_size + size_variation must be greater than 0",
        ),
        (
            {"type": "bandwidth", "attributes": {"rate": 10}},
            {"attributes": {"rate": -5}},
            "rate must not be negative",
        ),
        (
            {"type": "slicer", "attributes": {"average_size": 10}},
            {"attributes": {"average_size": 0}},
            "average_size must be greater than 0",
        ),
    ],
)
async def test_values_that_crash_the_real_server_are_refused(
    api: Api, toxic: dict[str, object], update: dict[str, object] | None, message: str
) -> None:
    await api.create_proxy("p", "127.0.0.1:1", enabled=False)
    if update is None:
        status, body, _ = await api.call("POST", "/proxies/p/toxics", toxic)
        assert await api.json("GET", "/proxies/p/toxics") == []
    else:
        before = await api.add_toxic("p", **toxic)
        status, body, _ = await api.call("PATCH", f"/proxies/p/toxics/{before['name']}", update)
        assert await api.json("GET", f"/proxies/p/toxics/{before['name']}") == before
    assert (status, body) == (400, error_body(f"invalid toxic attributes: {message}", 400))


# --- populate -----------------------------------------------------------------------------------


async def test_populate_creates_in_order_with_201(api: Api, echo: EchoServer) -> None:
    body = [
        {"name": "b", "listen": "127.0.0.1:0", "upstream": echo.address},
        {"name": "a", "listen": "127.0.0.1:0", "upstream": echo.address, "enabled": False},
    ]
    status, raw, headers = await api.call("POST", "/populate", body)
    assert (status, headers["Content-Type"]) == (201, "application/json")
    result = json.loads(raw)
    assert [p["name"] for p in result["proxies"]] == ["b", "a"]
    assert [p["enabled"] for p in result["proxies"]] == [True, False]
    assert not raw.endswith(b"\n")


async def test_populate_empty_array_gives_null(api: Api) -> None:
    status, raw, _ = await api.call("POST", "/populate", [])
    assert (status, raw) == (201, b'{"proxies":null}')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"name": "x"},
            "bad request body: json: cannot unmarshal object into Go value of type "
            '[]struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }',
        ),
        (
            [{"name": "a", "upstream": "u:1"}, {"upstream": "u:1"}],
            "missing required field: name at proxy 2",
        ),
        (
            [{"name": "a", "upstream": "u:1"}, {"name": "b"}],
            "missing required field: upstream at proxy 2",
        ),
    ],
)
async def test_populate_validates_everything_first(api: Api, body: object, message: str) -> None:
    status, raw, headers = await api.call("POST", "/populate", body)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert (
        raw
        == json.dumps(
            {"error": message, "status": 400, "proxies": None}, separators=(",", ":")
        ).encode()
    )
    assert await api.json("GET", "/proxies") == {}


async def test_populate_keeps_same_and_replaces_different(api: Api, echo: EchoServer) -> None:
    kept = await api.create_proxy("kept", echo.address)
    await api.set_enabled("kept", False)
    await api.add_toxic("kept", type="latency")
    replaced = await api.create_proxy("replaced", echo.address)
    await api.add_toxic("replaced", type="latency")
    other = EchoServer()
    await other.start()
    try:
        body = [
            {"name": "kept", "listen": kept["listen"], "upstream": echo.address},
            {"name": "replaced", "listen": replaced["listen"], "upstream": other.address},
        ]
        result = await api.json("POST", "/populate", body, expect=201)
    finally:
        await other.close()
    by_name = {p["name"]: p for p in result["proxies"]}
    # Kept untouched, including its disabled state and its toxic (enabled is ignored here).
    assert by_name["kept"]["enabled"] is False
    assert [t["name"] for t in by_name["kept"]["toxics"]] == ["latency_downstream"]
    # Replaced by a new proxy: toxics gone.
    assert by_name["replaced"]["upstream"] == other.address
    assert by_name["replaced"]["toxics"] == []
    assert by_name["replaced"]["enabled"] is True


async def test_populate_matches_localhost_to_its_resolved_listen(
    api: Api, echo: EchoServer
) -> None:
    created = await api.create_proxy("p", echo.address)
    await api.add_toxic("p", type="noop")
    body = [{"name": "p", "listen": f"localhost:{port_of(created)}", "upstream": echo.address}]
    result = await api.json("POST", "/populate", body, expect=201)
    assert result["proxies"][0]["toxics"] != []


async def test_populate_stops_at_the_first_error(api: Api, echo: EchoServer) -> None:
    body = [
        {"name": "ok1", "listen": "127.0.0.1:0", "upstream": echo.address},
        {"name": "bad", "listen": "local373", "upstream": echo.address},
        {"name": "never", "listen": "127.0.0.1:0", "upstream": echo.address},
    ]
    status, raw, headers = await api.call("POST", "/populate", body)
    assert status == 500
    assert headers["Content-Type"] == "application/json"
    result = json.loads(raw)
    assert list(result) == ["error", "status", "proxies"]
    assert result["error"] == "listen tcp: address local373: missing port in address"
    assert result["status"] == 500
    assert [p["name"] for p in result["proxies"]] == ["ok1"]
    assert sorted(await api.json("GET", "/proxies")) == ["ok1"]


# --- reset --------------------------------------------------------------------------------------


async def test_reset_enables_proxies_and_drops_toxics(api: Api, echo: EchoServer) -> None:
    for name in ("a", "b", "c"):
        await api.create_proxy(name, echo.address)
        await api.add_toxic(name, type="latency", stream="upstream")
        await api.add_toxic(name, type="timeout")
    await api.set_enabled("b", False)
    status, body, headers = await api.call("POST", "/reset")
    assert (status, body) == (204, b"")
    assert "Content-Type" not in headers
    proxies = await api.json("GET", "/proxies")
    assert all(p["enabled"] and p["toxics"] == [] for p in proxies.values())


async def test_reset_fails_with_500_when_a_proxy_cannot_start(api: Api, echo: EchoServer) -> None:
    await api.json(
        "POST",
        "/proxies",
        {"name": "p", "listen": echo.address, "upstream": echo.address, "enabled": False},
        expect=201,
    )
    status, body, _ = await api.call("POST", "/reset")
    assert status == 500
    assert body == error_body(f"listen tcp {echo.address}: bind: address already in use", 500)


# --- metrics and timeouts -----------------------------------------------------------------------


async def test_metrics_route_exists_only_when_enabled(api: Api) -> None:
    async with serve("127.0.0.1", 0) as plain, aiohttp.ClientSession() as session:
        status, body, _ = await Api(session, plain.url).call("GET", "/metrics")
        assert (status, body) == (404, b"404 page not found\n")
    # Any method is accepted on the metrics route.
    status, body, headers = await api.call("DELETE", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'promhttp_metric_handler_errors_total{cause="encoding"} 0.0' in body


async def test_handler_timeout_answers_503(echo: EchoServer) -> None:
    async with serve("127.0.0.1", 0, handler_timeout=0.3) as server:
        async with aiohttp.ClientSession() as session:
            api = Api(session, server.url)
            proxy = await api.create_proxy("p", echo.address)
            await api.add_toxic("p", type="reset_peer", attributes={"timeout": 1500})
            client = await Client.connect(port_of(proxy))
            # The first chunk starts reset_peer's uninterruptible wait; deleting the toxic
            # waits for it, past the handler limit.
            client.send(b"x")
            links = server.collection.get("p").toxics.links
            await eventually(
                lambda: any(
                    link.direction.label == "downstream" and link.received for link in links
                )
            )
            status, body, headers = await api.call(
                "DELETE", "/proxies/p/toxics/reset_peer_downstream"
            )
            assert status == 503
            assert body == (
                b"<html><head><title>Timeout</title></head><body><h1>Timeout</h1></body></html>"
            )
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            client.close()


async def test_server_start_reports_go_bind_errors(toxi: ToxiproxyServer) -> None:
    other = ToxiproxyServer()
    with pytest.raises(
        Exception, match=rf"listen tcp 127\.0\.0\.1:{toxi.port}: bind: address already in use"
    ):
        await other.start("127.0.0.1", toxi.port)
    await other.close()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
