"""Read landed webhook files from where the warehouse last stopped.

Each landing file (see `metering.webhooks.inbox` for the format) is read from the byte offset and
line count stored in `stripe_landing_offsets`, up to its last newline: a torn last record (a crash
mid-write, never acknowledged) is left unread and reported. The result is a frame of records; the
JSON is decoded later in DuckDB, as whole-frame SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from metering.webhooks.inbox import FILE_PREFIX, FILE_SUFFIX, LANDING_ENV, landing_dir

__all__ = ["LANDING_ENV", "FilePosition", "LandedRecords", "landing_dir", "landing_files", "landing_sizes",
           "read_new_records"]

RECORD_SCHEMA = {"landing_file": pl.String, "line_no": pl.Int64, "line": pl.String}


def landing_files(directory: Path) -> list[Path]:
    """Landing files in name order (hour first, so roughly receipt order)."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX))


@dataclass(frozen=True)
class FilePosition:
    """How far a landing file has been read: bytes and complete lines."""

    offset: int = 0
    lines: int = 0


@dataclass
class LandedRecords:
    """Records read in one pass, and where each file now stands."""

    records: pl.DataFrame
    positions: dict[str, FilePosition] = field(default_factory=dict)
    torn_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def torn_files(self) -> int:
        return len(self.torn_bytes)


def read_new_records(directory: Path, positions: Mapping[str, FilePosition]) -> LandedRecords:
    """Read every complete record past `positions` (keyed by file name) in `directory`."""
    frames: list[pl.DataFrame] = []
    new_positions: dict[str, FilePosition] = {}
    torn: dict[str, int] = {}
    for path in landing_files(directory):
        start = positions.get(path.name, FilePosition())
        try:
            with open(path, "rb") as fh:
                fh.seek(start.offset)
                chunk = fh.read()
        except FileNotFoundError:  # a file the receiver removed as empty after a failed delivery
            continue
        end = chunk.rfind(b"\n") + 1
        if len(chunk) > end:
            torn[path.name] = len(chunk) - end
        if end == 0:
            continue
        lines = chunk[:end].decode("utf-8", errors="replace").split("\n")[:-1]
        frames.append(
            pl.DataFrame({"line": lines}, schema={"line": pl.String}).select(
                pl.lit(path.name).alias("landing_file"),
                (pl.int_range(pl.len(), dtype=pl.Int64) + start.lines + 1).alias("line_no"),
                pl.col("line"),
            )
        )
        new_positions[path.name] = FilePosition(start.offset + end, start.lines + len(lines))
    records = pl.concat(frames) if frames else pl.DataFrame(schema=RECORD_SCHEMA)
    return LandedRecords(records, new_positions, torn)


def landing_sizes(directory: Path) -> dict[str, int]:
    """File name -> current size: what a sensor compares with its cursor (cheap: stat only)."""
    sizes = {}
    for p in landing_files(directory):
        try:
            sizes[p.name] = p.stat().st_size
        except FileNotFoundError:  # removed since listed: an empty file of a failed delivery
            continue
    return sizes
