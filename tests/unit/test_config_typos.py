"""A REGISTRY_PROXY_* variable that is no setting: `config check` refuses it, `serve` warns.

Each test runs the real CLI in a subprocess with an environment it controls: the caller's
REGISTRY_PROXY_* variables are removed first, so nothing of the developer's shell leaks in.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proxy.settings import env_names, unknown_env

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = REPO_ROOT / "config" / "example.env"
DSN = "postgresql://registry:change-me@127.0.0.1:9/registry"
TOKENS = '[{"token": "0123456789abcdef", "tenant": "acme", "role": "writer"}]'
GOOD = {"REGISTRY_PROXY_DATABASE_URL": DSN, "REGISTRY_PROXY_TOKENS": TOKENS}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REGISTRY_PROXY_")}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )


def _check(**extra: str) -> tuple[int, str]:
    result = _cli("config", "check", env=_env(**GOOD, **extra))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, (result.stdout + result.stderr).strip()


def test_a_clean_environment_passes() -> None:
    assert _check() == (0, "configuration ok")


def test_the_misspelt_read_mode_is_refused_with_the_right_name() -> None:
    rc, out = _check(REGISTRY_PROXY_READMODE="replica")
    assert rc == 2
    assert out == (
        "registry-proxy: invalid configuration: REGISTRY_PROXY_READMODE is not a setting "
        "(did you mean REGISTRY_PROXY_READ_MODE?)"
    )


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        # nested, misspelt leaf
        ("REGISTRY_PROXY_BREAKER__FAILURE_TRESHOLD", "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD"),
        # nested with one underscore instead of two
        ("REGISTRY_PROXY_BREAKER_FAILURE_THRESHOLD", "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD"),
        ("REGISTRY_PROXY_LOG_LEVEL", "REGISTRY_PROXY_LOG__LEVEL"),
        ("REGISTRY_PROXY_JOURNAL_DIR", "REGISTRY_PROXY_JOURNAL__DIR"),
        # _FILE variants: only DATABASE_URL_FILE and TOKENS_FILE exist
        ("REGISTRY_PROXY_TOKEN_FILE", "REGISTRY_PROXY_TOKENS_FILE"),
        ("REGISTRY_PROXY_DATABASE_FILE", "REGISTRY_PROXY_DATABASE_URL_FILE"),
        ("REGISTRY_PROXY_PORT_FILE", "REGISTRY_PROXY_PORT"),
        ("REGISTRY_PROXY_WRITE_FALLBAK", "REGISTRY_PROXY_WRITE_FALLBACK"),
    ],
)
def test_unknown_names_get_the_closest_valid_one(name: str, hint: str) -> None:
    rc, out = _check(**{name: "1"})
    assert rc == 2
    assert f"{name} is not a setting (did you mean {hint}?)" in out
    assert len(out.splitlines()) == 1


def test_a_name_like_no_setting_gets_no_suggestion() -> None:
    rc, out = _check(REGISTRY_PROXY_XYZZY="1")
    assert rc == 2
    assert out.endswith("REGISTRY_PROXY_XYZZY is not a setting")


def test_every_unknown_name_is_reported_in_one_line() -> None:
    rc, out = _check(REGISTRY_PROXY_READMODE="replica", REGISTRY_PROXY_PROT="3581")
    assert rc == 2
    [line] = out.splitlines()
    assert "REGISTRY_PROXY_READMODE" in line and "REGISTRY_PROXY_PROT" in line
    assert "did you mean REGISTRY_PROXY_PORT?" in line


def test_unknown_names_are_reported_next_to_an_invalid_value() -> None:
    rc, out = _check(REGISTRY_PROXY_PORT="not-a-port", REGISTRY_PROXY_READMODE="replica")
    assert rc == 2
    [line] = out.splitlines()
    assert line.startswith("registry-proxy: invalid configuration: port:")
    assert "REGISTRY_PROXY_READMODE is not a setting" in line


def test_the_value_of_an_unknown_variable_is_never_shown() -> None:
    secret = "s3cr3t-password-of-a-misspelt-dsn"
    rc, out = _check(REGISTRY_PROXY_DATABASEURL=f"postgresql://registry:{secret}@db/registry")
    assert rc == 2
    assert "REGISTRY_PROXY_DATABASE_URL?" in out
    assert secret not in out


def test_every_documented_variable_is_known() -> None:
    """example.env's names, set to their documented values, pass `config check`."""
    documented = dict(
        re.findall(r"^# (REGISTRY_PROXY_[A-Z0-9_]+)=(.*)$", EXAMPLE_ENV.read_text(), re.M)
    )
    for name in (
        "REGISTRY_PROXY_DATABASE_URL",
        "REGISTRY_PROXY_DATABASE_URL_FILE",
        "REGISTRY_PROXY_TOKENS",
        "REGISTRY_PROXY_TOKENS_FILE",
        "REGISTRY_PROXY_JOURNAL__DIR",
    ):
        documented.pop(name)
    assert len(documented) > 40
    assert set(documented) <= set(env_names())
    assert _check(**documented) == (0, "configuration ok")


def test_names_match_case_insensitively_like_the_settings() -> None:
    assert _check(registry_proxy_read_mode="replica") == (0, "configuration ok")
    rc, out = _check(registry_proxy_readmode="replica")
    assert rc == 2 and "registry_proxy_readmode is not a setting" in out


def test_file_variants_and_whole_groups_are_settings(tmp_path: Path) -> None:
    dsn, tokens = tmp_path / "dsn", tmp_path / "tokens.json"
    dsn.write_text(DSN + "\n")
    tokens.write_text(TOKENS)
    env = _env(
        REGISTRY_PROXY_DATABASE_URL_FILE=str(dsn),
        REGISTRY_PROXY_TOKENS_FILE=str(tokens),
        REGISTRY_PROXY_BREAKER='{"failure_threshold": 3}',
    )
    result = _cli("config", "check", env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "configuration ok"), result.stderr


def test_the_test_suites_own_variable_is_not_flagged() -> None:
    assert _check(REGISTRY_PROXY_TEST_DATABASE_URL=DSN) == (0, "configuration ok")


def test_unknown_env_ignores_other_prefixes() -> None:
    assert unknown_env({"REGISTRY_PROXYPORT": "1", "PROXY_PORT": "1", "PATH": "/bin"}) == []
    assert unknown_env({"REGISTRY_PROXY_": "1"}) == [("REGISTRY_PROXY_", None)]


def test_config_show_warns_and_still_shows() -> None:
    result = _cli("config", "show", env=_env(**GOOD, REGISTRY_PROXY_READMODE="replica"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["read_mode"] == "database"
    assert result.stderr.strip() == (
        "registry-proxy: warning: REGISTRY_PROXY_READMODE is not a setting "
        "(did you mean REGISTRY_PROXY_READ_MODE?)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_logs_a_warning_and_starts(tmp_path: Path) -> None:
    """serve does not refuse: it logs each unknown variable and serves. PostgreSQL is not
    needed: the sidecar starts without it and reports not ready."""
    port = _free_port()
    env = _env(
        **GOOD,
        REGISTRY_PROXY_READMODE="replica",
        REGISTRY_PROXY_PORT=str(port),
        REGISTRY_PROXY_JOURNAL__DIR=str(tmp_path / "journal"),
        REGISTRY_PROXY_LOG__FORMAT="json",
        REGISTRY_PROXY_MIGRATE_ON_START="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    events: list[dict[str, object]] = []
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        # A fresh checkout compiles every module on this first start; on a busy machine that
        # alone has taken half a minute.
        deadline = time.monotonic() + 120
        while not any(e.get("event") == "serving" for e in events):
            assert time.monotonic() < deadline, f"no 'serving' line: {events}"
            assert proc.poll() is None, f"serve exited with {proc.returncode}: {events}"
            if selector.select(timeout=1):
                line = proc.stdout.readline()
                if line.strip().startswith("{"):
                    events.append(json.loads(line))
        # Answering a request means the loop runs past start-up, signal handlers included.
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        proc.stdout.close()
    assert rc == 0
    warnings = [e for e in events if e.get("event") == "ignored: not a setting"]
    assert warnings == [
        {
            **warnings[0],
            "level": "warning",
            "variable": "REGISTRY_PROXY_READMODE",
            "did_you_mean": "REGISTRY_PROXY_READ_MODE",
        }
    ]
