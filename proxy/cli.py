"""`registry-proxy`: serve, migrate, dev, status, config show|check, journal check|recover."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web
from pydantic import SecretStr, ValidationError

from proxy.settings import Settings, masked, unknown_env, unknown_env_messages

if TYPE_CHECKING:
    from proxy.observability.collector import Refreezer

EXIT_CONFIG = 2

# A REGISTRY_PROXY_* variable that is no setting is ignored by the settings, so a misspelt name
# leaves its setting at the default without a word. `config check` refuses such a variable (exit
# 2): it is the pre-flight check, run before a rollout, where a mistake must stop the rollout.
# `serve` (and `dev`) only log a warning and start: the sidecar sits in the request path of its
# app, and a stray variable (one a newer or older version reads, during a rolling upgrade or a
# rollback; a leftover in a shared env file) must not take the app's registry access down.


def _config_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        return f"invalid configuration: {where + ': ' if where else ''}{msg}"
    return f"invalid configuration: {exc}"


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def _fail(message: str) -> int:
    print(f"registry-proxy: {message}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_config(args: argparse.Namespace) -> int:
    unknown = unknown_env_messages(os.environ)
    try:
        settings = load_settings()
        from proxy.http.auth import TokenStore

        tokens = TokenStore.from_json(settings.tokens_json())
    except (ValidationError, ValueError, OSError) as exc:
        return _fail("; ".join([_config_error(exc), *unknown]))
    if args.action == "show":
        for message in unknown:
            print(f"registry-proxy: warning: {message}", file=sys.stderr)
        print(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode())
        return 0
    problems = list(unknown)
    if settings.database_url is None:
        problems.append("no database: set REGISTRY_PROXY_DATABASE_URL")
    if len(tokens) == 0:
        problems.append("no tokens: set REGISTRY_PROXY_TOKENS or REGISTRY_PROXY_TOKENS_FILE")
    if problems:
        return _fail("invalid configuration: " + "; ".join(problems))
    print("configuration ok")
    return 0


async def _migrate(dsn: str) -> list[str]:
    import asyncpg

    from proxy.store.migrate import migrate

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ValidationError as exc:
        return _fail(_config_error(exc))
    if settings.database_url is None:
        return _fail("invalid configuration: no database: set REGISTRY_PROXY_DATABASE_URL")
    # Not through a transaction pooler: the migrations' advisory lock is a session's.
    direct = settings.database_direct_url or settings.database_url
    applied = asyncio.run(_migrate(direct.get_secret_value()))
    print(f"applied: {', '.join(applied) if applied else 'nothing, schema is current'}")
    return 0


async def serve(
    settings: Settings,
    *,
    banner: str | None = None,
    stopped: Callable[[web.Application], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests finish
    within `request.drain_timeout_s`, close journal and pool. A second signal exits at once.
    `stopped` is given the app once it has stopped (its journal closed, its figures final)."""
    from proxy.app import create_app
    from proxy.http.server import SidecarRunner

    app = create_app(settings)
    runner = SidecarRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.request.drain_timeout_s,
        access_log=None,
    )
    await runner.setup()
    # What start-up allocated (modules, settings, the app) lives for ever; keeping it out of
    # the collector's generations removes the long full collections that made p99 spikes.
    gc.collect()
    gc.freeze()
    refreezer = _refreezer(settings.gc_full_interval_s)
    trimmer = _start_heap_trim(settings.heap_trim_interval_s)
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log = structlog.get_logger("registry_proxy")
    if settings.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on a non-loopback address", host=settings.host)
    log.info("serving", url=f"http://{settings.host}:{settings.port}")
    if banner:
        print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("second signal: exiting at once", signal=signame)
            os._exit(1)
        log.info("draining", signal=signame, drain_timeout_s=settings.request.drain_timeout_s)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    reloads: set[asyncio.Future[None]] = set()

    def on_hup() -> None:
        from proxy.http import keys
        from proxy.http.auth import TokenError, TokenStore

        if settings.tokens_file is None:
            log.warning("SIGHUP: tokens come from the environment; nothing to reload")
            return
        try:
            fresh = TokenStore.from_json(settings.tokens_file.read_text())
        except (OSError, TokenError) as exc:
            log.error(
                "SIGHUP: tokens file not reloaded, keeping the current tokens", error=str(exc)
            )
            return
        tokens = app[keys.TOKENS]
        changed = fresh.tenants() != tokens.tenants()
        tokens.replace_with(fresh)
        log.info("SIGHUP: tokens reloaded", tokens=len(fresh))
        if changed:
            task = asyncio.ensure_future(app[keys.SIDECAR].set_tenants(fresh.tenants()))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    if trimmer is not None:
        trimmer.cancel()
    if refreezer is not None:
        refreezer.remove()
    await runner.cleanup()
    if stopped is not None:
        stopped(app)
    return 0


def _refreezer(full_every_s: float) -> Refreezer | None:
    """What survives each full collection frozen, everything walked once per `full_every_s`
    (`proxy.observability.collector` says why)."""
    from proxy.observability.collector import Refreezer

    return Refreezer(full_every_s=full_every_s).install() if full_every_s > 0 else None


def _start_heap_trim(interval_s: float) -> asyncio.Task[None] | None:
    """Fix glibc's thresholds and give the heap's free pages back every `interval_s`, off the
    event loop (`proxy.observability.heap` says why a long-lived process needs it)."""
    from proxy.observability import heap

    if interval_s <= 0 or not heap.tune():
        return None

    async def every() -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(heap.trim)

    return asyncio.ensure_future(every())


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def _configure_logging(settings: Settings) -> None:
    from proxy.observability.logging import configure

    configure(level=settings.log.level, fmt=settings.log.format)
    log = structlog.get_logger("registry_proxy")
    for name, hint in unknown_env(os.environ):
        log.warning("ignored: not a setting", variable=name, did_you_mean=hint)


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
        from proxy.http.auth import TokenStore

        TokenStore.from_json(settings.tokens_json())
    except (ValidationError, ValueError, OSError) as exc:
        return _fail(_config_error(exc))
    if settings.database_url is None:
        return _fail("invalid configuration: no database: set REGISTRY_PROXY_DATABASE_URL")
    _configure_logging(settings)
    from proxy.store.journal import JournalError

    try:
        return _run(serve(settings))
    except JournalError as exc:
        # A journal that will not open (damaged, locked, unreadable) says why in one line.
        structlog.get_logger("registry_proxy").error("journal not opened", error=str(exc))
        return 1


def _exe() -> str:
    """How this command was called (`.venv/bin/registry-proxy` under `make run`)."""
    return sys.argv[0] if Path(sys.argv[0]).name == "registry-proxy" else "registry-proxy"


def _dev_banner(url: str, token: str, workdir: Path, kept: bool) -> str:
    exe = _exe()
    url_arg = "" if url == "http://127.0.0.1:3580" else f" --url {url}"
    auth = '-H "Authorization: Bearer $TOKEN"'
    breaker = f"{auth} -H 'Content-Type: application/json' {url}/v1/admin/breaker -d"
    where = (
        f"{workdir} (kept)"
        if kept
        else f"{workdir} (deleted on Ctrl-C, unless the journal still holds writes)"
    )
    return (
        f"\nregistry-proxy is serving at {url}\n"
        f"  admin token (tenant 'dev'); paste this line into another shell first:\n"
        f"    TOKEN={token}\n"
        f"  try:        curl -s {auth} {url}/v1/status\n"
        f"  its state:  REGISTRY_PROXY_STATUS_TOKEN=$TOKEN {exe} status{url_arg}\n"
        f'  an outage:  curl -s {breaker} \'{{"state": "forced_open"}}\'\n'
        f"              (reads come from the replica, writes are journaled: 202)\n"
        f'  end it:     curl -s {breaker} \'{{"state": "automatic"}}\'\n'
        f"              (the journal is replayed into PostgreSQL)\n"
        f"  API document: {url}/openapi.json\n"
        f"  data: {where}\n"
        f"  Ctrl-C stops the sidecar and the database.\n"
    )


def cmd_dev(args: argparse.Namespace) -> int:
    """A throwaway PostgreSQL (unless REGISTRY_PROXY_DATABASE_URL is set), a dev admin token.

    Its journal and database live in a temporary directory, deleted on exit unless the journal
    still holds acknowledged writes (say, Ctrl-C during a forced outage): deleting it would drop
    writes the sidecar answered 202 for, so the directory is kept, and the way to resume (where
    the replay applies them) or to delete it is printed. `--dir` names the directory instead of
    a temporary one; it is never deleted, and a journal and database left there are used again.
    """
    from proxy.store.embedded import EmbeddedPostgres

    token = "dev-" + secrets.token_urlsafe(24)
    chosen = args.dir is not None
    workdir = Path(args.dir) if chosen else Path(tempfile.mkdtemp(prefix="registry-proxy-dev-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    pg: EmbeddedPostgres | None = None
    overrides: dict[str, Any] = {
        "tokens": SecretStr(
            orjson.dumps(
                [{"token": token, "tenant": "dev", "role": "admin", "id": "dev-admin"}]
            ).decode()
        ),
    }
    if args.port is not None:
        overrides["port"] = args.port
    if not os.environ.get("REGISTRY_PROXY_JOURNAL__DIR"):
        overrides["journal"] = {"dir": workdir / "journal"}
    if not os.environ.get("REGISTRY_PROXY_DATABASE_URL"):
        print("starting an embedded PostgreSQL ...", flush=True)
        pg = EmbeddedPostgres(root=workdir / "pg")
        pg.start()
        overrides["database_url"] = SecretStr(pg.dsn)
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        if pg is not None:
            pg.cleanup()
        if not chosen:
            shutil.rmtree(workdir, ignore_errors=True)
        return _fail(_config_error(exc))
    _configure_logging(settings)
    url = f"http://{settings.host}:{settings.port}"
    final: dict[str, int] = {}

    def stopped(app: web.Application) -> None:
        from proxy.http import keys

        final["depth"] = app[keys.SIDECAR].journal_depth()

    code = 1
    try:
        code = _run(
            serve(settings, banner=_dev_banner(url, token, workdir, chosen), stopped=stopped)
        )
    finally:
        depth = final.get("depth")
        if depth is None:  # it failed rather than stopped: what is on disk decides
            depth = _journal_records(settings.journal.dir)
        keep = chosen or depth != 0
        if pg is not None:
            if keep:
                with contextlib.suppress(Exception):
                    pg.stop()
            else:
                pg.cleanup()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not chosen:
            _kept_notice(workdir, settings.journal.dir, depth)
    return code


def _journal_records(directory: Path) -> int | None:
    """Records in a journal that was not closed by the sidecar (None: unreadable)."""
    from proxy.store.journal import JournalError, inspect_journal

    try:
        return int(inspect_journal(directory).get("acknowledged_records", 0))
    except JournalError:
        return None


def _kept_notice(workdir: Path, journal_dir: Path, depth: int | None) -> None:
    held = (
        "may still hold acknowledged writes"
        if depth is None
        else f"still holds {depth} acknowledged write{'s' if depth != 1 else ''} that PostgreSQL "
        "does not have"
    )
    print(
        f"\nregistry-proxy: the journal ({journal_dir}) {held}, so {workdir} is kept, not "
        "deleted.\n"
        f"  resume, and the replay applies them:  {_exe()} dev --dir {workdir}\n"
        f"  or throw them away:                   rm -rf {workdir}",
        file=sys.stderr,
        flush=True,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from proxy.status_cli import run

    return run(args)


def cmd_journal(args: argparse.Namespace) -> int:
    """`check` reads the journal and reports damage (exit 1) without changing anything;
    `recover` opens it with damaged acknowledged records set aside in a side file."""
    from proxy.store.journal import Journal, JournalError, OnDamage, inspect_journal

    try:
        settings = load_settings()
    except ValidationError as exc:
        return _fail(_config_error(exc))
    directory = Path(args.dir) if args.dir else settings.journal.dir
    from proxy.observability.logging import configure

    # The report goes to stdout; what the journal logs on the way (the damage) goes to stderr.
    configure(level=settings.log.level, fmt=settings.log.format, stream=sys.stderr)

    async def recover() -> dict[str, Any]:
        journal = await Journal.open(
            directory,
            fsync=settings.journal.fsync,
            reserve_bytes=settings.journal.reserve_bytes,
            on_damage=OnDamage.QUARANTINE,
        )
        try:
            stats = journal.stats()
        finally:
            await journal.close()
        return {key: stats[key] for key in ("path", "depth", "torn_bytes_dropped", "damage")}

    try:
        report = inspect_journal(directory) if args.action == "check" else asyncio.run(recover())
    except JournalError as exc:
        print(f"registry-proxy: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    if args.action == "check" and report["damage"]:
        print(f"registry-proxy: {report['message']}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry-proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the sidecar, configured from the environment")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("migrate", help="apply the schema to REGISTRY_PROXY_DATABASE_URL")
    p.set_defaults(fn=cmd_migrate)
    p = sub.add_parser("dev", help="one-command demo on an embedded PostgreSQL")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--dir",
        help="keep the journal and the embedded database here (reused if there), instead of a "
        "temporary directory",
    )
    p.set_defaults(fn=cmd_dev)
    from proxy.status_cli import add_parser

    add_parser(sub).set_defaults(fn=cmd_status)
    p = sub.add_parser("config", help="show or check the effective configuration")
    p.add_argument("action", choices=["show", "check"])
    p.set_defaults(fn=cmd_config)
    p = sub.add_parser(
        "journal",
        help="check the write journal for damage, or recover it by setting damaged records aside "
        "(stop the sidecar first)",
    )
    p.add_argument("action", choices=["check", "recover"])
    p.add_argument("--dir", help="journal directory (default: REGISTRY_PROXY_JOURNAL__DIR)")
    p.set_defaults(fn=cmd_journal)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
