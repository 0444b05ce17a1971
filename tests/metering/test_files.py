"""Durable writes (`metering.files`): what a power cut may not undo once a write has returned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metering.files import replacing_all, write_atomically


def test_a_replaced_file_is_synced_before_its_rename_and_its_folder_after(tmp_path: Path, synced_paths):
    """The rename lives in the folder: until the folder is synced, a power cut can bring back the old
    file, though the caller (a dunning run's commit, a report) already counts the new one."""
    target = tmp_path / "published" / "suspensions.json"
    target.parent.mkdir()
    target.write_text("old")
    synced_paths.clear()
    write_atomically(target, "new")
    assert target.read_text() == "new"
    assert synced_paths[-1] == target.parent
    assert [p.name for p in synced_paths[:-1]] == [f".suspensions.json.{os.getpid()}.tmp"]


def test_new_folders_are_synced_into_their_parents_and_each_folder_once(tmp_path: Path, synced_paths):
    a, b, c = tmp_path / "r" / "m" / "a.csv", tmp_path / "r" / "m" / "b.csv", tmp_path / "r" / "c.csv"
    with replacing_all([a, b, c]) as temps:
        for tmp in temps:
            tmp.write_text("x")
    folders = [p for p in synced_paths if p.is_dir()]
    # made top down (r into tmp_path, m into r), then the renames' two folders, once each
    assert folders == [tmp_path, tmp_path / "r", tmp_path / "r" / "m", tmp_path / "r"]
    assert sorted(p.name for p in synced_paths if not p.is_dir()) == [
        f".{name}.{os.getpid()}.tmp" for name in ("a.csv", "b.csv", "c.csv")]


def test_a_failed_block_leaves_the_target_and_no_temporary_file(tmp_path: Path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing_all([target]) as (tmp,):
        tmp.write_text("half")
        raise RuntimeError("the commit failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["data", "report.html"]
