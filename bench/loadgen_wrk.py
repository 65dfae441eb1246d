"""Saturation with wrk (C) instead of the Python generator, when it is installed.

On two shared cores the generator's own CPU time is taken from the server under test; wrk needs
far less of it per request. Its Lua script is written from the same workload definition as the
Python generator's requests, and its text output is read back into the same result shape. A
generator confined to some cores (the server-bound configuration) is started under taskset.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.workload import PERFORMANCE_BODY, Workload, register_body


def find_wrk() -> str | None:
    """wrk on PATH, else beside the interpreter: ``scripts/get-debian-tool.sh wrk wrk .venv/bin``
    installs it there without a system package."""
    found = shutil.which("wrk")
    if found is not None:
        return found
    beside = Path(sys.executable).parent / "wrk"
    return str(beside) if beside.exists() else None


def on_cpus(cmd: list[str], cpus: set[int] | None) -> list[str]:
    """`cmd` confined to `cpus` from its first instruction, so every thread it starts inherits
    the affinity (pinning after the start would race the threads it creates)."""
    if not cpus:
        return cmd
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("pinning the load generator needs taskset (util-linux)")
    return [taskset, "-c", ",".join(str(c) for c in sorted(cpus)), *cmd]


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrk_script(w: Workload, unique: str, threads: int = 1) -> str:
    paths = ", ".join(_lua_string(p) for p in w.paths)
    # Each thread starts its walk over the paths at its own share of them: walking in step, the
    # threads would post outcomes for the same agent at the same moment, and a target would be
    # measured waiting on that row's lock, which real traffic spread over agents rarely makes.
    stride = len(w.paths) // max(1, threads)
    headers = []
    if w.token:
        headers.append(f'["Authorization"] = {_lua_string("Bearer " + w.token)}')
    if w.body is not None:
        headers.append('["Content-Type"] = "application/json"')
    lines = [
        f"local paths = {{{paths}}}",
        f"local headers = {{{', '.join(headers)}}}",
        f"local method = {_lua_string(w.method)}",
        "local n = 0",
        "local counter = 1",
        # `tid` is a global of each thread's own Lua state, set from the main state.
        "function setup(thread)",
        "  thread:set('tid', counter)",
        "  counter = counter + 1",
        "end",
    ]
    if w.body == "register":
        parts = register_body("AGENTID").decode().split("AGENTID")
        lines += [
            f"local parts = {{{', '.join(_lua_string(p) for p in parts)}}}",
            "function request()",
            "  n = n + 1",
            f"  local id = {_lua_string(w.id_prefix + '-' + unique + '-t')} .. tid .. '-' .. n",
            "  return wrk.format(method, paths[1], headers, table.concat(parts, id))",
            "end",
        ]
    else:
        body = "nil" if w.body is None else _lua_string(PERFORMANCE_BODY.decode())
        lines += [
            f"local body = {body}",
            f"local stride = {stride}",
            "function request()",
            "  n = n + 1",
            "  return wrk.format(method, paths[((n + (tid - 1) * stride) % #paths) + 1], headers,"
            " body)",
            "end",
        ]
    return "\n".join(lines) + "\n"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_wrk(text: str, window_s: float) -> dict[str, Any]:
    def grab(pattern: str) -> str | None:
        m = re.search(pattern, text, re.MULTILINE)
        return m.group(1) if m else None

    total = int(grab(r"^\s*(\d+) requests in") or 0)
    non2xx = int(grab(r"Non-2xx or 3xx responses: (\d+)") or 0)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    lat: dict[str, float] = {}
    for p in ("50", "90", "99"):
        v = grab(rf"^\s*{p}(?:\.000)?%\s+(\S+)")
        if v is not None:
            lat[f"p{p}"] = round(_wrk_ms(v), 3)
    mean = grab(r"^\s*Latency\s+(\S+)")
    if mean is not None:
        lat["mean"] = round(_wrk_ms(mean), 3)
    ok = total - non2xx
    return {
        "mode": "closed",
        "tool": "wrk",
        "window_s": window_s,
        "answered": total,
        "ok": ok,
        "unexpected_status": non2xx,
        "errors": errors,
        "unfinished": 0,
        "statuses": {"2xx": ok, "other": non2xx},
        "throughput_rps": round(ok / window_s, 1) if window_s > 0 else 0.0,
        "latency_ms": lat,
    }


def run_wrk(
    wrk: str,
    w: Workload,
    host: str,
    port: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
    threads: int,
    unique: str,
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    threads = max(1, min(threads, connections))
    url = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "script.lua"
        script.write_text(_wrk_script(w, unique, threads))

        def run(seconds: int, tag: str) -> str:
            # A fresh id prefix per run, so registrations never collide with earlier ones.
            script.write_text(_wrk_script(w, f"{unique}{tag}", threads))
            cmd = on_cpus(
                [
                    wrk,
                    f"-t{threads}",
                    f"-c{connections}",
                    f"-d{seconds}s",
                    "--latency",
                    "--timeout",
                    "10s",
                    "-s",
                    str(script),
                    url,
                ],
                cpus,
            )
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
            return done.stdout

        warm_total = 0
        if warmup_s >= 0.5:
            warm_total = _parse_wrk(run(max(1, round(warmup_s)), "w"), 1.0)["answered"]
        seconds = max(1, round(duration_s))
        text = run(seconds, "m")
    out = _parse_wrk(text, float(seconds))
    out["answered_total"] = out["answered"] + warm_total
    # wrk counts every answer that is not 2xx/3xx as an error; a 202 is fine for writes.
    out["connections"] = connections
    out["processes"] = threads
    out["expect"] = list(w.expect)
    return out
