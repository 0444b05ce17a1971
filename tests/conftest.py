"""Shared fixtures: every test gets its own files under tmp_path and its own environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["metering.stripe_sandbox.pytest_plugin"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every default path at tmp_path, so no test touches the repo's data/ folder."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("METERING_DATA_DIR", str(data))
    monkeypatch.setenv("METERING_WAREHOUSE", str(data / "warehouse.duckdb"))
    monkeypatch.setenv("METERING_SNAPSHOT", str(data / "snapshot.duckdb"))
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "1")
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return data


@pytest.fixture
def rules_dir() -> Path:
    """The shipped example rules (read-only: copy before modifying)."""
    return PROJECT_ROOT / "rating_rules"


@pytest.fixture
def synced_paths(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path `os.fsync` is called on during the test, in order (the real fsync still runs)."""
    real_fsync = os.fsync
    synced: list[Path] = []

    def recording(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return synced
