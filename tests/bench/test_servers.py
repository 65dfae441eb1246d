"""The bench's server processes: a port taken between `free_port` and the bind is not a failure."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from bench import servers
from bench.servers import HOST, Server, free_port


async def test_a_server_whose_port_was_taken_starts_again_on_another(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, port))
        squatter.listen()
        cmd = [sys.executable, "-m", "bench.baselines", "bare", "--port", str(port)]
        server = Server("bare", cmd, port, tmp_path / "bare.log", dict(os.environ))
        server.start()
        try:
            await server.wait_until("/healthz", 60)
            assert server.port != port
            assert server.url == f"http://{HOST}:{server.port}"
            assert b"address already in use" in (tmp_path / "bare.log").read_bytes()
        finally:
            server.stop()


def test_a_port_is_handed_out_once() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_postgres_files_go_to_memory_when_the_machine_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.setattr(servers, "MEMORY_FS", memory)
    root, storage = servers.postgres_root(tmp_path / "work", in_memory=True)
    assert (storage, root.parent) == ("memory", memory)
    assert root.is_dir()
    assert servers.postgres_root(tmp_path / "work", in_memory=False) == (
        tmp_path / "work" / "pg",
        "disk",
    )
    monkeypatch.setattr(servers, "MEMORY_FS", tmp_path / "none")
    assert servers.postgres_root(tmp_path / "work", in_memory=True)[1] == "disk"
