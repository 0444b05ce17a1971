"""Fixtures for the push tests: see push_world.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox
from push_world import NOW, World, make_world


@pytest.fixture
def world(tmp_path: Path, rules_dir: Path) -> Iterator[World]:
    with running_sandbox(now=int(NOW.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        yield make_world(con, sb, rules_dir, tmp_path)
