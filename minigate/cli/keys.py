"""`minigate keys`: API keys kept in the log store (create, list, revoke), and the log key that encrypts
payloads (generate one, rotate to a new one)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from minigate.cli.common import ConfigOption, config_or_exit, err, exit_on, fail, out

__all__ = ["app"]

app = typer.Typer(help="API keys in the log store (create, list, revoke); the log key that encrypts payloads "
                  "(generate, rotate).", no_args_is_help=True)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for: the name calls are logged and limited under.")],
    role: Annotated[str, typer.Option(help="agent (inference), analyst (aggregates, metrics) or admin.")] = "agent",
    rpm: Annotated[Optional[int], typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[Optional[int], typer.Option(min=1, help="Tokens per minute.")] = None,
    usd_per_day: Annotated[Optional[float], typer.Option(min=0, help="Spend per UTC day.")] = None,
    usd_per_month: Annotated[Optional[float], typer.Option(min=0, help="Spend per calendar month.")] = None,
    limits: Annotated[Optional[str], typer.Option(
        help='Limits as JSON, routes included: \'{"rpm": 60, "routes": {"gpt-4.1": {"usd_per_day": 5}}}\'; '
        "the options above override its top-level values.")] = None,
    expires: Annotated[Optional[str], typer.Option(
        help="When it stops working: 30d, 12h, 2w, or an ISO 8601 time.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a key and store its SHA-256 in the log store; the key is printed once, here, and never again.

    Every gateway on that store accepts it within `auth.refresh_s` (2 s by default).
    """
    import hashlib
    import secrets

    import orjson
    from pydantic import ValidationError

    from minigate.gateway.settings import KeyLimits
    from minigate.logger.stores import StoredKey

    cfg = config_or_exit(config)
    if not _NAME.match(name):
        fail(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if role not in ("agent", "analyst", "admin"):
        fail(f"--role {role!r}: choose agent, analyst or admin")
    if any(entry.name == name for entry in cfg.auth.keys):
        fail(f"the config already has a key named {name!r} (auth.keys); choose another name")
    try:
        given: dict[str, Any] = orjson.loads(limits) if limits else {}
        overrides = {"rpm": rpm, "tpm": tpm, "usd_per_day": usd_per_day, "usd_per_month": usd_per_month}
        chosen = KeyLimits.model_validate({**given, **{k: v for k, v in overrides.items() if v is not None}})
    except (orjson.JSONDecodeError, ValidationError, TypeError) as exc:
        fail(f"--limits: {exc}")
    unknown = sorted(set(chosen.routes) - set(cfg.routes))
    if unknown:
        fail(f"--limits: unknown route(s) {', '.join(unknown)} (routes: {', '.join(sorted(cfg.routes))})")
    key = "mg-" + secrets.token_urlsafe(32)
    now = time.time()
    row = StoredKey(name, hashlib.sha256(key.encode()).hexdigest(), role,
                    chosen.model_dump_json(exclude_defaults=True), now, _expiry(expires, now), None)
    if not _in_store(cfg.logging.store, "add_api_key", row):
        fail(f"a key named {name!r} exists and is not revoked; revoke it first (minigate keys revoke {name})")
    if as_json:
        typer.echo(orjson.dumps({"name": name, "key": key, "role": role, "limits": orjson.loads(row.limits),
                                 "expires_at": row.expires_at}).decode())
        return
    typer.echo(key)
    err.print(f"key {name!r} ({role}) stored; this is the only time it is shown")


@app.command("list")
def keys_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The stored keys (never the keys themselves): role, limits, created, expiry, revocation."""
    import orjson

    cfg = config_or_exit(config)
    rows = _in_store(cfg.logging.store, "api_keys")
    now = time.time()
    if as_json:
        typer.echo(orjson.dumps([{"name": r.name, "role": r.role, "limits": orjson.loads(r.limits),
                                  "created_at": r.created_at, "expires_at": r.expires_at,
                                  "revoked_at": r.revoked_at, "active": r.active(now)} for r in rows]).decode())
        return
    table = Table("name", "role", "limits", "created", "expires", "status", title="stored API keys")
    for r in rows:
        status = "revoked" if r.revoked_at is not None else "expired" if not r.active(now) else "active"
        table.add_row(r.name, r.role, r.limits if r.limits != "{}" else "-", _day(r.created_at),
                      _day(r.expires_at) if r.expires_at else "never", status)
    out.print(table)


@app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The stored key's name.")],
                config: ConfigOption = None) -> None:
    """Revoke a stored key: every gateway on the store refuses it within `auth.refresh_s`."""
    cfg = config_or_exit(config)
    if not _in_store(cfg.logging.store, "revoke_api_key", name, time.time()):
        if any(entry.name == name for entry in cfg.auth.keys):
            fail(f"{name!r} is a key of the config (auth.keys): remove it there; the gateway reloads the file")
        fail(f"no unrevoked stored key is named {name!r} (minigate keys list shows them)")
    err.print(f"key {name!r} revoked")


def _in_store(url: str, method: str, *args: Any) -> Any:
    """Call one store method on the config's log store, and close it."""
    import asyncio

    from minigate.logger.stores import open_store

    async def call() -> Any:
        store = await open_store(url)
        try:
            return await getattr(store, method)(*args)
        finally:
            await store.close()

    with exit_on(OSError, ConnectionError):
        return asyncio.run(call())


def _expiry(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    if (match := _DURATION.match(value.strip())) is not None:
        return now + float(match.group(1)) * _SECONDS[match.group(2)]
    from minigate.logger.stores import parse_time

    try:
        at = parse_time(value)
    except ValueError:
        fail(f"--expires {value!r}: give a duration (30d, 12h, 2w, 90m) or an ISO 8601 time")
    if at <= now:
        fail(f"--expires {value!r} is in the past")
    return at


def _day(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(at)) if at else "-"


@app.command("generate")
def keys_generate() -> None:
    """Print a new log key (for MINIGATE_LOG_KEY or logging.encryption_key)."""
    from minigate.logger.crypto import generate_key

    typer.echo(generate_key())


@app.command("rotate")
def keys_rotate(config: ConfigOption = None) -> None:
    """Re-wrap every stored payload under the current log key.

    With a key file (the embedded default), a new key is generated and put first in the file; the old
    ones stay as previous keys. With `logging.encryption_key`, set the new key there first and move the
    old one to `logging.previous_keys`; once this finishes, the old key is no longer needed by the store.
    """
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from minigate.logger.crypto import key_id
    from minigate.logger.keys import KeyFileError, load_keys, rotate_key_file
    from minigate.logger.rotation import rotate_store

    cfg = config_or_exit(config)
    with exit_on(KeyFileError):
        found = load_keys(cfg.logging, create=False)
    if found is None:
        fail("no log key is configured (logging.encryption_key, logging.key_file), so no payload is encrypted and "
             "there is nothing to rotate")
    if found.file is not None:
        found = rotate_key_file(found)
        err.print(f"new log key {key_id(found.current)} written first in {found.file}")
    with Progress(TextColumn("re-wrapping"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("rotate", total=None)
        rotation = asyncio.run(rotate_store(cfg.logging.store, found.cipher(),
                                            pending=lambda count: bar.update(task, total=count),
                                            progress=lambda n: bar.advance(task, n)))
    table = Table("log key id", "records", "role")
    for kid, count in sorted(rotation.usage.items()):
        table.add_row(kid, str(count), "current" if kid == key_id(found.current) else "previous")
    err.print(table)
    err.print(f"{rotation.rewrapped} records re-wrapped under key {key_id(found.current)}")
