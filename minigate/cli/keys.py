"""`minigate keys`: the log key that encrypts payloads; generate one, rotate to a new one."""

from __future__ import annotations

import typer
from rich.table import Table

from minigate.cli.common import ConfigOption, config_or_exit, err, exit_on, fail

__all__ = ["app"]

app = typer.Typer(help="The log key that encrypts payloads: generate one, rotate to a new one.", no_args_is_help=True)


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
