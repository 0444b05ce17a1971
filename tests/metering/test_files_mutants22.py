"""Tests that kill mutants `tests/metering/test_files.py` let through (hand mutation audit 22c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.files import replacing_all


def test_an_interrupt_in_the_block_leaves_the_targets_and_no_temporary_file(tmp_path: Path):
    """Ctrl-C (KeyboardInterrupt, not an Exception) while the block writes: both targets keep their
    old text and neither temporary file is left beside them."""
    a, b = tmp_path / "out" / "a.csv", tmp_path / "out" / "b.csv"
    a.parent.mkdir()
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(KeyboardInterrupt), replacing_all([a, b]) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("half")
        raise KeyboardInterrupt
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.csv", "b.csv"]


def test_each_temporary_file_is_put_in_place_over_its_own_target(tmp_path: Path):
    """Three targets in two folders: each gets the text written to its own temporary path."""
    paths = [tmp_path / "r" / "m" / "a.csv", tmp_path / "r" / "m" / "b.csv", tmp_path / "r" / "c.csv"]
    with replacing_all(paths) as temps:
        for tmp, path in zip(temps, paths):
            tmp.write_text(path.name)
    assert [p.read_text() for p in paths] == ["a.csv", "b.csv", "c.csv"]
