"""Go's address rules in the Toxiproxy-compatible server: the corners the API tests do not reach."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest

from chaos.toxiproxy import netaddr
from chaos.toxiproxy.netaddr import (
    AddrError,
    TcpAddr,
    bind_listener,
    format_sockname,
    go_errno_text,
    lookup_port,
    resolve_tcp_addr,
    split_host_port,
)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("[::1]:x:80", "address [::1]:x:80: too many colons in address"),
        ("a[b:80", "address a[b:80: unexpected '[' in address"),
        ("[a]b]:80", "address [a]b]:80: missing port in address"),
    ],
)
def test_split_host_port_rejects_like_go(address: str, message: str) -> None:
    with pytest.raises(AddrError) as caught:
        split_host_port(address)
    assert str(caught.value) == message


def test_an_empty_address_error_has_no_prefix() -> None:
    assert str(netaddr._addr_error("", "missing port in address")) == "missing port in address"


def test_a_bare_sign_is_port_zero_and_a_negative_zero_is_fine() -> None:
    assert lookup_port("+") == 0
    assert lookup_port("-0") == 0


def test_service_names_resolve_through_the_services_database() -> None:
    try:
        expected = socket.getservbyname("http", "tcp")
    except OSError:
        pytest.skip("no services database on this machine")
    assert lookup_port("http") == expected


def test_an_unknown_service_name_gets_gos_message() -> None:
    with pytest.raises(AddrError) as caught:
        lookup_port("no-such-service-here")
    assert str(caught.value) == "lookup tcp/no-such-service-here: unknown port"


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (TcpAddr(None, 80), ":80"),
        (TcpAddr(ipaddress.ip_address("10.0.0.1"), 1), "10.0.0.1:1"),
        (TcpAddr(ipaddress.ip_address("::1"), 2), "[::1]:2"),
        (TcpAddr(ipaddress.ip_address("fe80::1"), 3, "eth0"), "[fe80::1%eth0]:3"),
        (TcpAddr(ipaddress.ip_address("::ffff:10.1.2.3"), 4), "10.1.2.3:4"),
    ],
)
def test_tcp_addr_formats_like_go(addr: TcpAddr, text: str) -> None:
    assert str(addr) == text


def test_wildcards() -> None:
    assert TcpAddr(None, 0).is_wildcard
    assert TcpAddr(ipaddress.ip_address("0.0.0.0"), 0).is_wildcard
    assert TcpAddr(ipaddress.ip_address("::"), 0).is_wildcard
    assert not TcpAddr(ipaddress.ip_address("127.0.0.1"), 0).is_wildcard


async def test_a_zone_on_an_ipv6_literal_is_kept() -> None:
    addr = await resolve_tcp_addr("[fe80::1%lo]:9")
    assert addr.zone == "lo"
    assert str(addr) == "[fe80::1%lo]:9"


async def test_a_zone_on_an_ipv4_literal_is_a_host_name_that_does_not_resolve() -> None:
    with pytest.raises(AddrError, match=r"^lookup 127\.0\.0\.1%lo: no such host$"):
        await resolve_tcp_addr("127.0.0.1%lo:9")


async def test_an_unknown_host_gets_gos_message() -> None:
    with pytest.raises(AddrError, match=r"^lookup no-such-host\.invalid: no such host$"):
        await resolve_tcp_addr("no-such-host.invalid:80")


async def test_a_name_without_any_inet_address_is_no_such_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def only_unix(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", "/tmp/sock")]

    loop = __import__("asyncio").get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", only_unix)
    with pytest.raises(AddrError, match=r"^lookup somewhere: no such host$"):
        await resolve_tcp_addr("somewhere:1")


async def test_brackets_prefer_ipv6_and_fall_back_to_the_first_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    infos = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1%eth0", 0, 0, 0)),
    ]

    async def fake(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return infos

    loop = __import__("asyncio").get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake)
    assert str(await resolve_tcp_addr("dual:1")) == "192.0.2.1:1"
    assert str(await resolve_tcp_addr("[dual]:1")) == "[2001:db8::1]:1"
    infos[:] = infos[1:]
    assert str(await resolve_tcp_addr("dual:2")) == "[2001:db8::1]:2"


def test_errno_texts_are_lowercased_like_gos() -> None:
    assert go_errno_text(OSError(errno.EADDRINUSE, "x")) == "address already in use"
    assert go_errno_text(OSError("no errno here")) == "no errno here"


def test_socket_names_format_like_go() -> None:
    assert format_sockname(("127.0.0.1", 5)) == "127.0.0.1:5"
    assert format_sockname(("::", 6, 0, 0)) == "[::]:6"
    assert format_sockname(("fe80::1%lo", 7, 0, 1)) == "[fe80::1%lo]:7"


async def test_bind_listener_reports_what_it_bound() -> None:
    sock, name = await bind_listener("127.0.0.1:0")
    try:
        host, port = split_host_port(name)
        assert host == "127.0.0.1"
        assert int(port) == sock.getsockname()[1] > 0
        assert not sock.getblocking()
    finally:
        sock.close()


async def test_bind_listener_on_the_wildcard_without_ipv6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netaddr, "_dual_stack_available", lambda: False)
    sock, name = await bind_listener(":0")
    try:
        assert name.startswith("0.0.0.0:")
    finally:
        sock.close()


async def test_bind_listener_on_a_port_in_use_gets_gos_message() -> None:
    taken, name = await bind_listener("127.0.0.1:0")
    try:
        # SO_REUSEADDR lets a closed port be rebound, never one that is still listening.
        with pytest.raises(AddrError) as caught:
            await bind_listener(name)
        assert str(caught.value) == f"listen tcp {name}: bind: address already in use"
    finally:
        taken.close()


async def test_bind_listener_passes_resolution_errors_on() -> None:
    with pytest.raises(AddrError) as caught:
        await bind_listener("nowhere")
    assert str(caught.value) == "listen tcp: address nowhere: missing port in address"


async def test_bind_listener_when_no_socket_can_be_made(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(netaddr.socket, "socket", refuse)
    with pytest.raises(AddrError) as caught:
        await bind_listener("127.0.0.1:0")
    assert str(caught.value) == "listen tcp 127.0.0.1:0: socket: too many open files"


def test_dual_stack_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netaddr.socket, "has_ipv6", False)
    assert netaddr._dual_stack_available() is False

    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(netaddr.socket, "has_ipv6", True)
    monkeypatch.setattr(netaddr.socket, "socket", refuse)
    assert netaddr._dual_stack_available() is False


async def test_bind_listener_closes_the_socket_when_listen_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[socket.socket] = []

    class NoListen(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

        def listen(self, backlog: int = 0, /) -> None:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(netaddr.socket, "socket", NoListen)
    with pytest.raises(AddrError) as caught:
        await bind_listener("127.0.0.1:0")
    assert str(caught.value) == "listen tcp 127.0.0.1:0: listen: operation not supported"
    assert [s.fileno() for s in made] == [-1]
