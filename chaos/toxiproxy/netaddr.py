"""TCP address handling with Go's ``net`` package semantics.

The Toxiproxy API exposes Go's address behaviour directly: ``listen`` is reported as the address
Go's listener bound (``localhost:0`` becomes ``127.0.0.1:41234``, an empty or wildcard host
becomes ``[::]:port``), /populate and updates compare listen strings after ``ResolveTCPAddr``, and
errors carry Go's texts (``address foo: missing port in address``,
``listen tcp 127.0.0.1:80: bind: address already in use``). Python's socket layer formats and
resolves differently, so the Go rules are reproduced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass

__all__ = [
    "AddrError",
    "TcpAddr",
    "bind_listener",
    "format_sockname",
    "go_errno_text",
    "lookup_port",
    "resolve_tcp_addr",
    "split_host_port",
]

# The IPv4 wildcard, spelled as Go's listener sees it. Binding it is what the caller asked for.
_IPV4_ANY = "0.0.0.0"  # noqa: S104


class AddrError(Exception):
    """An address error, its message formatted as Go formats the error."""


def _addr_error(addr: str, why: str) -> AddrError:
    return AddrError(f"address {addr}: {why}" if addr else why)


def split_host_port(hostport: str) -> tuple[str, str]:
    """``net.SplitHostPort``: the host (brackets removed) and the port string."""
    colon = hostport.rfind(":")
    if colon < 0:
        raise _addr_error(hostport, "missing port in address")
    start, end_limit = 0, 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _addr_error(hostport, "missing ']' in address")
        if end + 1 == len(hostport):
            raise _addr_error(hostport, "missing port in address")
        if end + 1 != colon:
            if hostport[end + 1] == ":":
                raise _addr_error(hostport, "too many colons in address")
            raise _addr_error(hostport, "missing port in address")
        host = hostport[1:end]
        start, end_limit = 1, end + 1
    else:
        host = hostport[:colon]
        if ":" in host:
            raise _addr_error(hostport, "too many colons in address")
    if "[" in hostport[start:]:
        raise _addr_error(hostport, "unexpected '[' in address")
    if "]" in hostport[end_limit:]:
        raise _addr_error(hostport, "unexpected ']' in address")
    return host, hostport[colon + 1 :]


def lookup_port(service: str) -> int:
    """``net.LookupPort`` for TCP: decimal ports (Go's overflow rules) or a service name."""
    if service == "":
        return 0
    text = service
    negative = False
    if text[0] in "+-":
        negative = text[0] == "-"
        text = text[1:]
    if (text.isascii() and text.isdigit()) or text == "":
        # Go saturates huge values instead of overflowing, then range-checks.
        value = min(int(text or "0"), 1 << 30)
        port = -value if negative else value
        if not 0 <= port <= 0xFFFF:
            raise _addr_error(service, "invalid port")
        return port
    try:
        return socket.getservbyname(service, "tcp")
    except OSError:
        raise AddrError(f"lookup tcp/{service}: unknown port") from None


@dataclass(frozen=True)
class TcpAddr:
    """A resolved TCP address; ``ip`` is None for an empty host (Go's nil IP)."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    port: int
    zone: str = ""

    def __str__(self) -> str:
        if self.ip is None:
            return f":{self.port}"
        ip = self.ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if isinstance(ip, ipaddress.IPv6Address):
            zone = f"%{self.zone}" if self.zone else ""
            return f"[{ip}{zone}]:{self.port}"
        return f"{ip}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.ip is None or self.ip.is_unspecified


def _parse_ip(host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str] | None:
    ip_text, _, zone = host.partition("%")
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        return None
    if zone and not isinstance(ip, ipaddress.IPv6Address):
        return None
    return ip, zone


async def resolve_tcp_addr(address: str) -> TcpAddr:
    """``net.ResolveTCPAddr("tcp", address)``; raises AddrError with Go's message."""
    host, port_text = ("", "") if address == "" else split_host_port(address)
    port = lookup_port(port_text)
    if host == "":
        return TcpAddr(None, port)
    literal = _parse_ip(host)
    if literal is not None:
        return TcpAddr(literal[0], port, literal[1])
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise AddrError(f"lookup {host}: no such host") from None
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            candidates.append(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]))
    if not candidates:
        raise AddrError(f"lookup {host}: no such host")
    # Go picks the first IPv4 address unless the host was written in brackets.
    want_v6 = "[" in address
    for ip in candidates:
        if isinstance(ip, ipaddress.IPv6Address) == want_v6:
            return TcpAddr(ip, port)
    return TcpAddr(candidates[0], port)


def go_errno_text(exc: OSError) -> str:
    """The syscall error text Go prints, e.g. ``address already in use``."""
    if exc.errno is None:
        return str(exc)
    text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]


def format_sockname(sockname: tuple[object, ...]) -> str:
    """Format ``getsockname()`` the way Go's ``TCPAddr.String()`` does."""
    host = str(sockname[0])
    port = int(str(sockname[1]))
    ip_text, _, zone = host.partition("%")
    return str(TcpAddr(ipaddress.ip_address(ip_text), port, zone))


def _dual_stack_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    probe.close()
    return True


async def bind_listener(listen: str) -> tuple[socket.socket, str]:
    """``net.Listen("tcp", listen)``: a listening non-blocking socket and its Go address string.

    Raises AddrError carrying Go's ``listen tcp ...`` message on any failure.
    """
    try:
        addr = await resolve_tcp_addr(listen)
    except AddrError as exc:
        raise AddrError(f"listen tcp: {exc}") from None
    if addr.is_wildcard and _dual_stack_available():
        # Go listens on a dual-stack IPv6 socket for any wildcard and reports it as [::]:port.
        family, bind_host, dual = socket.AF_INET6, "::", True
    elif addr.is_wildcard:
        family, bind_host, dual = socket.AF_INET, _IPV4_ANY, False
    else:
        assert addr.ip is not None
        family = socket.AF_INET6 if addr.ip.version == 6 else socket.AF_INET
        bind_host = str(addr.ip) + (f"%{addr.zone}" if addr.zone else "")
        dual = False
    prefix = f"listen tcp {addr}"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise AddrError(f"{prefix}: socket: {go_errno_text(exc)}") from None
    try:
        # Go sets SO_REUSEADDR on listeners, which lets a re-enabled proxy rebind its port at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((bind_host, addr.port))
        except OSError as exc:
            raise AddrError(f"{prefix}: bind: {go_errno_text(exc)}") from None
        try:
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            raise AddrError(f"{prefix}: listen: {go_errno_text(exc)}") from None
        sock.setblocking(False)
        return sock, format_sockname(sock.getsockname())
    except BaseException:
        sock.close()
        raise
