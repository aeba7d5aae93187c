"""Faults a test can cause for real: a small file system to fill up, and bodies nested too deep."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "nested", "tmpfs"]


@contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A small RAM file system at `path`, for a test to fill up; skips where mounting is not permitted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; delete it to give the space back."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(64 * 1024))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def nested(depth: int, innermost: bytes) -> bytes:
    """A chat body with a field `depth` levels deep, as bytes (orjson refuses to build one past 254)."""
    return (b'{"model":"cheap","messages":[{"role":"user","content":"hi"}],"metadata":' + b'{"a":' * depth
            + innermost + b"}" * depth + b"}")
