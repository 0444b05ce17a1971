"""Edges of the warehouse seam that a hand mutation audit (m21d) found untested."""

import duckdb
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.errors import BadInputError
from tests.test_warehouse import _warehouse_before


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2 * 10**9))
@example(63)
@example(64)
@example(10**9)
@example(10**9 + 1)
def test_a_memory_limit_is_accepted_from_64mb_to_1pb_both_included(megabytes):
    # 64MB = 64 * 10^6 bytes is the floor; 1PB = 10^15 bytes = 10^9 MB the ceiling ("64MB .. 1PB")
    accepted = warehouse.memory_limit_problem(f"{megabytes}MB") is None
    assert accepted == (64 <= megabytes <= 10**9)


def test_the_limits_named_in_the_message_are_themselves_accepted():
    # the message says "outside 64MB .. 1PB": a user who writes either bound is not refused
    assert warehouse.memory_limit_problem("64MB") is None
    assert warehouse.memory_limit_problem("1000TB") is None  # 1000 * 10^12 = 10^15 bytes = 1PB
    assert warehouse.memory_limit_problem("63.999999MB") == "'63.999999MB' is outside 64MB .. 1PB"
    assert warehouse.memory_limit_problem("1000.000001TB") == "'1000.000001TB' is outside 64MB .. 1PB"


def test_a_log_that_only_changes_values_is_published_with_the_changed_values(tmp_path):
    """The file's bytes lack what the write-ahead log holds even when every table keeps its row count
    (an UPDATE): the row-count check of the file copy cannot see that, so a file with a log to replay
    is copied table by table, as DuckDB reads it (log replayed)."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS n")   # checkpointed into the file at close
    con = duckdb.connect(str(wh))
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.execute("UPDATE t SET n = 2")   # committed, in the log only
    con.close()
    assert warehouse.database_files(wh)[1].stat().st_size > 0
    warehouse.publish(wh, snap)
    with duckdb.connect(str(snap), read_only=True) as reader:
        assert reader.execute("SELECT list(n) FROM t").fetchone() == ([2],)


def test_a_snapshot_whose_name_starts_with_a_dot_and_reads_analytics_is_refused(tmp_path):
    # DuckDB drops the leading dots: `.analytics.duckdb` is the catalog `analytics` as well
    with warehouse.open_warehouse(tmp_path / "w.duckdb"):
        pass
    with pytest.raises(BadInputError, match=r"a snapshot cannot be named \.analytics\.duckdb"):
        warehouse.publish(tmp_path / "w.duckdb", tmp_path / ".analytics.duckdb")
    assert not (tmp_path / ".analytics.duckdb").exists()


def test_a_read_only_open_of_a_missing_warehouse_says_where_to_look_and_creates_nothing(tmp_path):
    # a reader (report, publish checks) given a mistyped path is told which settings name the file
    missing = tmp_path / "typo.duckdb"
    with pytest.raises(BadInputError, match=r"typo\.duckdb: no warehouse there \(check --warehouse or "
                                            r"\$METERING_WAREHOUSE; `metering ingest` creates one\)"):
        warehouse.connect(missing, read_only=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]   # only the isolated data folder of conftest


def _schema(path):
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
                           "WHERE NOT internal GROUP BY ALL ORDER BY ALL").fetchall()


def test_a_migration_that_fails_midway_leaves_none_of_its_statements_behind(tmp_path):
    # 003 adds ingested_files.file_id and creates usage_events_by_file_id, then fails on its INSERT for
    # an event whose file has no manifest entry: the warehouse keeps exactly its schema before 003
    path = tmp_path / "w.duckdb"
    con = _warehouse_before(path, "002_events_without_payload_hash")
    con.execute("INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, source_file, "
                "source_line, file_hash, ingested_at) VALUES ('orphan', 'c', 'api_calls', now(), current_date, "
                "'gone.jsonl', 1, 'unknown-hash', now())")
    con.close()
    before = _schema(path)
    with pytest.raises(BadInputError, match="migration 003_events_name_their_file_by_id cannot be applied"):
        warehouse.connect(path)
    assert _schema(path) == before


