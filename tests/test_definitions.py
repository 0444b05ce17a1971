"""The code location loads, and every warehouse writer is serialised through the one pool."""

import dagster as dg

from pipelines.definitions import defs
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
