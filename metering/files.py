"""Plain files written whole or not at all: a temporary file beside the target, fsynced, then renamed
over it; on any failure (a full disk, an interrupt) the temporary file is removed and the target is as
it was. The one way the engine writes a file other code or people read (suspension lists, outbox
messages, report files)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sync(path: Path) -> None:
    """fsync a file, or a folder (which makes the names in it durable), by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """`mkdir -p` whose new folders survive a power cut: each is synced into its parent (a file's own
    fsync does not make its folder's name durable)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        sync(folder.parent)


@contextmanager
def replacing_all(paths: list[Path]) -> Iterator[tuple[Path, ...]]:
    """Yield a temporary path beside each of `paths` to write; once the block ends, all are fsynced, then
    renamed over their targets. The renames (which need no space) come only once the block has ended
    without error, so work the block does after writing them (a commit) decides whether any is put in
    place. If the block (or a sync) fails, the temporary files are removed and the targets untouched.

    Durable once it returns: new folders are synced into their parents, and each target's folder after
    the renames (a rename lives in the folder, not in the file: without that sync a power cut could bring
    back the old file under a commit that already counts the new one)."""
    temps = []
    try:
        for path in paths:
            make_dirs(path.parent)
            temps.append(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
        yield tuple(temps)
        for tmp in temps:
            sync(tmp)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
        for folder in dict.fromkeys(path.parent for path in paths):
            sync(folder)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` whole or not at all; returns `path`."""
    with replacing_all([path]) as (tmp,):
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path
