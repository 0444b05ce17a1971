"""Where things live. Every default path is relative to the project root and overridable by env.

Paths are resolved at call time (not import time) so tests and commands can point a process at
another warehouse by setting the environment variable or passing an explicit path.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlsplit
from collections.abc import Callable
from pathlib import Path

from metering.errors import BadInputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def refuse_non_utf8(path: str | os.PathLike[str], where: str = "") -> None:
    """A path that is not UTF-8 (bytes Python keeps as surrogates) cannot be handed to DuckDB, Arrow or
    Polars, nor stored as text: refused, its bad bytes shown escaped (such names ended in a
    UnicodeEncodeError or TypeError traceback, and `generate` left half its files behind)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise BadInputError(f"{where}{shown}: the file name is not valid UTF-8, which DuckDB, Arrow and Polars "
                            f"cannot use (nothing was done): rename it, or choose another") from None


def data_dir() -> Path:
    """The folder for generated and runtime files (`METERING_DATA_DIR`, default `data/`; empty = unset,
    like every other path variable, rather than the current directory)."""
    env = os.environ.get("METERING_DATA_DIR")
    if env:
        refuse_non_utf8(env, "$METERING_DATA_DIR: ")
    return Path(env or PROJECT_ROOT / "data")


def resolve_path(explicit: str | os.PathLike[str] | None, env_var: str, default: Callable[[], Path]) -> Path:
    """The explicit path if given, else the environment variable if set, else the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(env_var)
    if env:
        refuse_non_utf8(env, f"${env_var}: ")
    return Path(env) if env else default()


def path_origin(explicit: str | os.PathLike[str] | None, option: str, env_var: str | None) -> str:
    """Where a path under `data_dir()` that `resolve_path` chose came from, to name in a message about
    it: the option when given, else `$<env_var>` when set (a message that named the option blamed
    one never used), else the option's default, which `$METERING_DATA_DIR` may have moved."""
    if explicit:
        return option
    if env_var and os.environ.get(env_var):
        return f"${env_var}"
    return f"{option} (default{', under $METERING_DATA_DIR' if os.environ.get('METERING_DATA_DIR') else ''})"


def warehouse_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The DuckDB warehouse file: explicit path, else `METERING_WAREHOUSE`, else `data/warehouse.duckdb`."""
    return resolve_path(explicit, "METERING_WAREHOUSE", lambda: data_dir() / "warehouse.duckdb")


def snapshot_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The published read-only snapshot: explicit, else `METERING_SNAPSHOT`, else `data/snapshot.duckdb`.

    Not `analytics.duckdb`: DuckDB names a file's catalog after it, and a catalog called `analytics`
    makes every `analytics.<view>` reference ambiguous with the snapshot's `analytics` schema.
    """
    return resolve_path(explicit, "METERING_SNAPSHOT", lambda: data_dir() / "snapshot.duckdb")


def rules_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The pricing rules folder: explicit, else `METERING_RULES`, else `rating_rules/`."""
    return resolve_path(explicit, "METERING_RULES", lambda: PROJECT_ROOT / "rating_rules")


def raw_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where raw usage log files are dropped: explicit, else `METERING_RAW_DIR`, else `data/raw/`."""
    return resolve_path(explicit, "METERING_RAW_DIR", lambda: data_dir() / "raw")


def customers_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The customer list with plan assignments: explicit, else `METERING_CUSTOMERS`, else `data/customers.csv`."""
    return resolve_path(explicit, "METERING_CUSTOMERS", lambda: data_dir() / "customers.csv")


def ensure_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create the folder `path` (and its parents) if needed and check a file can be created in it.

    Raises `BadInputError` naming `what` (an option such as `--out`, or "warehouse <file>") and the
    folder. Called before the work starts, so a mistyped output path fails in a second, not after it.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"{what}: {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # root passes every permission check, so only creating a file tells (/proc, read-only mounts)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        doing = "create files in" if folder.is_dir() else "create the folder"
        raise BadInputError(f"{what}: cannot {doing} {folder}: {exc.strerror or exc}") from None
    return folder


def ensure_file_target(path: str | os.PathLike[str], what: str) -> Path:
    """Check that a file can be written at `path` (its folder is created); see `ensure_dir`. Returns it."""
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{what} {target}: is a folder, not a file")
    ensure_dir(target.parent, f"{what} {target}")
    return target


def is_http_url(text: str) -> bool:
    """An http(s) URL with a host and, if any, a valid port (`urlsplit` raises on a bracketed host it
    cannot read, and on a port out of range only when asked for it)."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
