import dagster as dg

from pipelines.definitions import defs


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_warehouse_writers_share_one_pool():
    from pipelines.resources import WAREHOUSE_POOL

    for asset in defs.assets or []:
        if isinstance(asset, dg.AssetsDefinition) and "duckdb" in (asset.specs_by_key and
                next(iter(asset.specs)).kinds or set()):
            for node in asset.node_def.iterate_node_defs() if hasattr(asset.node_def, "iterate_node_defs") else [asset.node_def]:
                assert node.pool == WAREHOUSE_POOL, f"{asset.key} writes DuckDB outside the writer pool"
