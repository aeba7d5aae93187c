"""`minigate tasks rename` and `merge`: one load-edit-save of the catalogue file for every edit a person makes.

The edit itself is pure (`router.catalogue.rename`, `merge`); this is where it meets the file, so an edit
that fails (an unknown task, a name already taken) leaves the file as it was, and one that succeeds
replaces `tasks.yaml` and `tasks.npz` whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minigate.router.catalogue import Catalogue, load_catalogue, save_catalogue

__all__ = ["edit_catalogue"]


def edit_catalogue(path: Path, edit: Callable[[Catalogue], Catalogue]) -> Catalogue:
    """Load the catalogue at `path`, apply `edit`, save the result and return it (CatalogueError when it fails)."""
    edited = edit(load_catalogue(path))
    save_catalogue(edited, path)
    return edited
