"""The server as a process: the toxiproxy-python client against it, and the command line."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from chaos.toxiproxy.testing import (
    ToxiproxyStartError,
    free_port,
    toxiproxy_process,
    toxiproxy_thread,
    wait_for_version,
)

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def roundtrip(port: int, data: bytes = b"ping") -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            received += chunk
    assert received == data
    return time.monotonic() - start


def get_json(url: str) -> object:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def consumer() -> Iterator[None]:
    """toxiproxy-python keeps its server address in class attributes: restore them after."""
    saved = (APIConsumer.host, APIConsumer.port)
    yield
    APIConsumer.host, APIConsumer.port = saved


def test_toxiproxy_python_client_works_unchanged(consumer: None) -> None:
    with echo_server() as upstream, toxiproxy_process() as url:
        port = int(url.rsplit(":", 1)[1])
        server = Toxiproxy()
        server.update_api_consumer("127.0.0.1", port)
        assert server.running()
        assert server.version() == b'{"version": "2.12.0"}\n'

        proxy = server.create(upstream=upstream, name="pg")
        assert proxy.enabled is True
        proxy_port = int(proxy.listen.rsplit(":", 1)[1])
        assert proxy_port != 0
        roundtrip(proxy_port)
        with pytest.raises(ProxyExists):
            server.create(upstream=upstream, name="pg")
        assert set(server.proxies()) == {"pg"}

        proxy.add_toxic(type="latency", attributes={"latency": 800})
        proxy.add_toxic(type="limit_data", name="cap", stream="upstream", toxicity=0.0)
        toxics = proxy.toxics()
        assert set(toxics) == {"latency_downstream", "cap"}
        assert toxics["latency_downstream"].attributes == {"latency": 800, "jitter": 0}
        assert proxy.get_toxic("cap").toxicity == 0
        assert roundtrip(proxy_port) >= 0.8
        with pytest.raises(InvalidToxic):
            proxy.add_toxic(type="down")
        with pytest.raises(ProxyExists):
            proxy.add_toxic(type="latency")
        assert proxy.destroy_toxic("latency_downstream") is True
        with pytest.raises(NotFound):
            proxy.destroy_toxic("latency_downstream")
        # Far below the toxic's 0.8 s, yet loose enough for a loaded machine.
        assert roundtrip(proxy_port) < 0.6

        with proxy.down():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
            assert server.get_proxy("pg").enabled is False
        assert server.get_proxy("pg").enabled is True
        roundtrip(proxy_port)

        proxy.disable()
        assert server.reset() is True
        assert server.get_proxy("pg").enabled is True
        assert proxy.toxics() == {}

        created = server.populate(
            [{"name": "extra", "upstream": upstream, "listen": "127.0.0.1:0"}]
        )
        assert [p.name for p in created] == ["extra"]
        assert set(server.proxies()) == {"pg", "extra"}

        assert proxy.destroy() is True
        assert server.get_proxy("pg") is None
        server.destroy_all()
        assert server.proxies() == {}


def test_version_flag_prints_and_exits() -> None:
    for flag in ("-version", "--version"):
        result = subprocess.run(
            [sys.executable, "-m", "chaos.toxiproxy", flag],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
            check=False,
        )
        assert (result.returncode, result.stdout) == (0, "toxiproxy-server version 2.12.0\n")


def test_config_file_is_loaded_at_start(tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps(
            [
                {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"},
                {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1", "enabled": False},
            ]
        )
    )
    with toxiproxy_process(extra_args=[f"-config={config}", "--seed", "7"]) as url:
        proxies = get_json(f"{url}/proxies")
        assert isinstance(proxies, dict)
        assert {name: p["enabled"] for name, p in proxies.items()} == {"a": True, "b": False}


def test_bad_config_is_only_logged(tmp_path: Path) -> None:
    config = tmp_path / "broken.json"
    config.write_text("{not json")
    with toxiproxy_process(extra_args=["-config", str(config)]) as url:
        assert get_json(f"{url}/proxies") == {}


def test_bind_failure_exits_with_the_go_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "chaos.toxiproxy", "-host", "127.0.0.1", "-port", str(port)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert f"listen tcp 127.0.0.1:{port}: bind: address already in use" in result.stderr
        with pytest.raises(ToxiproxyStartError), toxiproxy_process(port=port, startup_timeout=5):
            pass


def test_sigterm_shuts_down_cleanly() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chaos.toxiproxy", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_version(f"http://127.0.0.1:{port}", 15, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_thread_helper_serves_the_api() -> None:
    with echo_server() as upstream, toxiproxy_thread() as url:
        assert wait_for_version(url, 5) == '{"version": "2.12.0"}\n'
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            f"{url}/proxies",
            data=json.dumps({"name": "t", "listen": "127.0.0.1:0", "upstream": upstream}).encode(),
            method="POST",
        )
        with opener.open(request, timeout=5) as response:
            created = json.loads(response.read())
        roundtrip(int(created["listen"].rsplit(":", 1)[1]))
