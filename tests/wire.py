"""Answers read off a raw connection, for tests that write HTTP/1.1 themselves."""

from __future__ import annotations

import asyncio


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """The next answer: its status line, its header fields (names lowercased), its body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:] if line)
    body = await reader.readexactly(int(fields["Content-Length"]))
    return head[0], {k.lower(): v for k, v in fields.items()}, body
