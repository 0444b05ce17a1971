"""The code location loads (every listed domain, or a loud error), every asset states its grain, and
every warehouse writer is serialised through the one pool."""

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import _domain_defs, defs
from pipelines.resources import WAREHOUSE_POOL


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_every_duckdb_asset_and_check_runs_in_the_writer_pool():
    graph = defs.resolve_asset_graph()
    offenders = []
    for assets_def in graph.assets_defs:
        if not assets_def.is_executable:
            continue
        kinds = set().union(*(spec.kinds for spec in assets_def.specs)) if assets_def.specs else set()
        writes_duckdb = "duckdb" in kinds or any(
            "dagster/kind/duckdb" in (spec.tags or {}) for spec in assets_def.specs
        )
        if writes_duckdb and assets_def.node_def.pool != WAREHOUSE_POOL:
            offenders.append(str(assets_def.keys))
    for checks_def in defs.asset_checks or []:
        if getattr(checks_def.node_def, "pool", None) not in (None, WAREHOUSE_POOL):
            offenders.append(str(checks_def.check_keys))
    assert offenders == []


def test_every_asset_has_a_description_stating_its_grain():
    # Factory-built assets (the Stripe state assets) once had none: the docstring was set too late.
    graph = defs.resolve_asset_graph()
    descriptions = {node.key.to_user_string(): node.description or "" for node in graph.asset_nodes
                    if node.is_executable}
    assert {"stripe_invoices", "stripe_subscriptions", "stripe_payment_attempts"} <= set(descriptions)
    assert [k for k, d in descriptions.items() if not d.startswith("One ")] == []


def test_a_domain_missing_from_defs_fails_the_load():
    with pytest.raises(ModuleNotFoundError, match="DOMAINS lists 'ratign'"):
        _domain_defs(("ingest", "ratign"))


@pytest.fixture
def fake_domains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """`make(definitions_source)` -> the name of a fresh package with one domain, `broken`."""
    package = f"fake_domains_{tmp_path.name}"

    def make(definitions: str) -> str:
        domain = tmp_path / package / "broken"
        domain.mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
        (domain / "__init__.py").write_text("")
        (domain / "definitions.py").write_text(definitions.replace("PACKAGE", package))
        monkeypatch.syspath_prepend(str(tmp_path))
        return package

    yield make
    for name in [m for m in sys.modules if m.split(".")[0] == package]:
        del sys.modules[name]


@pytest.mark.parametrize(("definitions", "missing"), [
    ("import PACKAGE.broken.helpers\n", "PACKAGE.broken.helpers"),  # a module of the domain itself
    ("import no_such_dependency_for_metering\n", "no_such_dependency_for_metering"),
])
def test_an_import_error_inside_a_domain_propagates(fake_domains, definitions, missing):
    package = fake_domains(definitions)
    with pytest.raises(ModuleNotFoundError) as raised:
        _domain_defs(("broken",), package=package)
    assert raised.value.name == missing.replace("PACKAGE", package)


def test_a_domain_without_defs_fails_the_load(fake_domains):
    package = fake_domains("assets = []\n")
    with pytest.raises(TypeError, match="must define `defs"):
        _domain_defs(("broken",), package=package)


def test_every_warehouse_job_publishes_the_analyst_snapshot_last():
    """DESIGN: the snapshot is swapped in after each job. Every job that runs a writer-pool asset also
    runs `analyst_snapshot`, which depends on every writer-pool asset, so it comes after all of them."""
    graph = defs.resolve_asset_graph()
    snapshot = dg.AssetKey("analyst_snapshot")
    writers = {key for assets_def in graph.assets_defs if assets_def.is_executable
               and assets_def.node_def.pool == WAREHOUSE_POOL for key in assets_def.keys} - {snapshot}
    assert writers and graph.get(snapshot).parent_keys == writers
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]
    missing = {job.name for job in jobs
               if job.asset_layer.selected_asset_keys & writers and snapshot not in job.asset_layer.selected_asset_keys}
    assert {job.name for job in jobs} >= {"ingest_job", "hourly_usage_job", "billing_job", "reconciliation_job",
                                          "stripe_state_job", "dunning_job"}
    assert missing == set()


def test_the_instance_ends_a_run_whose_worker_died(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose worker was killed stays STARTED (the default launcher cannot check a worker): with
    no runtime limit it held the one writer slot for ever (audit). The shipped dagster.yaml sets one,
    and frees a slot 300 s after a run ends."""
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.chdir(tmp_path)   # its storage paths are relative to the repo root
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert 0 < instance.run_monitoring_max_runtime_seconds <= 24 * 3600   # a dead run holds the slot a day at most
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
