"""Edges of the warehouse seam that a third hand mutation audit (m28f) found untested: the frame helpers
(`insert_frame`, `replace_rows`, `query_frame`), `transaction` under an interrupt, the connection
`open_warehouse` and a refused `connect` must give back, the migration runner's record and messages
(`schema_migrations`, which versions it names and in what order, DuckDB's reason on a failed migration),
and the column types, NOT NULLs and DEFAULTs of the DDL in `metering/migrations/` that the code relies on.

Each test names the plausible bug it rules out. Real DuckDB files under `tmp_path` throughout.
"""

import datetime as dt
import hashlib
import subprocess
import sys
import textwrap
from decimal import Decimal

import duckdb
import polars as pl
import pytest

from metering import warehouse
from metering.errors import BadInputError


# --- frames in and out ------------------------------------------------------------------------------------


def test_insert_frame_matches_columns_by_name_quotes_them_and_defaults_the_rest(tmp_path):
    """A frame's columns are matched to the table's by name, whatever their order, and quoted (a column
    named `order` is a SQL keyword); a column the frame lacks gets its DEFAULT. Matching by position
    would put 'x' into `order` (an INTEGER: a conversion error) or shift every value one column over."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute('CREATE TABLE t ("order" INTEGER, label VARCHAR, "two words" VARCHAR, n INTEGER DEFAULT 7)')
        frame = pl.DataFrame({"two words": ["x"], "label": ["a"], "order": [3]})
        assert warehouse.insert_frame(con, "t", frame) == 1
        # by name: order=3, label='a', "two words"='x'; n not in the frame: its DEFAULT 7
        assert con.execute('SELECT "order", label, "two words", n FROM t').fetchall() == [(3, "a", "x", 7)]


def test_insert_frame_leaves_no_view_of_the_frame_behind(tmp_path):
    """The frame is registered as a view only for the INSERT: one left registered per call would pile up
    (and keep every frame's Arrow memory alive for as long as the connection)."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (k INTEGER)")
        for k in range(3):
            warehouse.insert_frame(con, "t", pl.DataFrame({"k": [k]}))
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name LIKE '_frame_%'").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_replace_rows_with_nothing_to_insert_only_deletes(tmp_path):
    """A partition that now has no rows: the frame is empty, even of columns (`pl.DataFrame()`), and the
    rows matching `where` are deleted; 0 rows inserted (an `INSERT INTO t () SELECT  FROM ...` would be a
    syntax error)."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (d DATE, k INTEGER)")
        con.execute("INSERT INTO t VALUES ('2026-01-01', 1), ('2026-01-02', 2)")
        assert warehouse.replace_rows(con, "t", "d = ?", ["2026-01-01"], pl.DataFrame()) == 0
        assert con.execute("SELECT CAST(d AS VARCHAR), k FROM t").fetchall() == [("2026-01-02", 2)]


def test_replace_rows_binds_its_params_in_order(tmp_path):
    """`where_sql`'s placeholders take `params` in order: (k = 1 AND v = 10) deletes the one row (1, 10);
    bound the other way round (k = 10 AND v = 1) it would delete nothing and leave a duplicate."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (k INTEGER, v INTEGER)")
        con.execute("INSERT INTO t VALUES (1, 10), (1, 20), (10, 1)")
        warehouse.replace_rows(con, "t", "k = ? AND v = ?", [1, 10], pl.DataFrame({"k": [1], "v": [11]}))
        assert con.execute("SELECT k, v FROM t ORDER BY ALL").fetchall() == [(1, 11), (1, 20), (10, 1)]


def test_query_frame_keeps_decimals_exact(tmp_path):
    """Money leaves the warehouse as Decimal (through Arrow), never as a float: 0.1 + 0.2 stays 0.3 and
    a 12-decimal quantity keeps its last digit."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        frame = warehouse.query_frame(
            con, "SELECT CAST(? AS DECIMAL(38, 12)) + CAST(? AS DECIMAL(38, 12)) AS amount", ["0.1", "0.2"])
        assert frame.schema["amount"] == pl.Decimal(38, 12)  # the sum of two DECIMAL(38, 12): 38 is the widest
        assert frame["amount"].to_list() == [Decimal("0.300000000000")]
        tiny = warehouse.query_frame(con, "SELECT CAST('123456789012345.000000000001' AS DECIMAL(38, 12)) AS q")
        assert tiny["q"].to_list() == [Decimal("123456789012345.000000000001")]


# --- transactions and connections -----------------------------------------------------------------------


def test_an_interrupt_inside_a_transaction_rolls_it_back(tmp_path):
    """Ctrl-C (KeyboardInterrupt, not an Exception) in the middle of a partition write: the transaction is
    rolled back, not left open on the connection (where the next BEGIN fails, and a later COMMIT would
    commit the half-done delete)."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (k INTEGER)")
        con.execute("INSERT INTO t VALUES (1), (2)")
        with pytest.raises(KeyboardInterrupt), warehouse.transaction(con):
            con.execute("DELETE FROM t WHERE k = 1")
            raise KeyboardInterrupt
        assert con.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (2,)]
        with warehouse.transaction(con):   # a new transaction opens: none was left open
            con.execute("INSERT INTO t VALUES (3)")
        assert con.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_the_error_that_ended_a_transaction_is_the_one_raised_even_when_rollback_fails(tmp_path):
    """When DuckDB has already ended the transaction (after a fatal error it refuses the ROLLBACK: here the
    block ended it itself), the ROLLBACK's own complaint ('no transaction is active') must not replace the
    error that says why the work stopped."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        with pytest.raises(ValueError, match="the reason the work stopped"), warehouse.transaction(con):
            con.execute("ROLLBACK")
            raise ValueError("the reason the work stopped")


def test_open_warehouse_closes_the_connection_when_the_block_ends(tmp_path):
    """The context manager gives the file back: the connection is closed after the block (a command that
    kept it open would keep every other process's writer out until it exits)."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        pass
    with pytest.raises(duckdb.ConnectionException):
        con.execute("SELECT 1")


def _another_process_can_write(path) -> str:
    """What a separate process that opens `path` for writing prints."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb
        try:
            duckdb.connect({str(path)!r}).close()
            print("opened")
        except duckdb.Error as exc:
            print("refused:", str(exc).splitlines()[0])
    """)], capture_output=True, text=True, timeout=60).stdout.strip()


def test_a_refused_connect_closes_the_connection_it_opened(tmp_path):
    """`connect` opens the file before it checks the migrations: when it refuses the warehouse it closes
    what it opened, even while the caller still holds the error (whose traceback references the open
    connection), so another process can open the file."""
    path = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("INSERT INTO schema_migrations VALUES ('099_from_the_future', 'abc', now())")
    with pytest.raises(BadInputError, match="099_from_the_future unknown here") as refused:
        warehouse.connect(path)
    assert refused.value is not None   # the error, and its traceback, still held here
    assert _another_process_can_write(path) == "opened"


def test_a_memory_limit_with_spaces_around_it_is_taken(tmp_path):
    """`--memory-limit " 2GB "` (a value pasted with its spaces, or from an env file): the check and the
    SET both take the size without them. 2GB is 2e9 bytes = 1.86 GiB, which DuckDB shows as '1.8 GiB'."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb", memory_limit=" 2GB ") as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "1.8 GiB"


# --- the migration runner ---------------------------------------------------------------------------------


def test_a_new_warehouse_records_every_migration_in_order_with_its_checksum_and_time(tmp_path):
    """`apply_migrations` on an empty database applies every file, in number order, and returns them; each
    row of schema_migrations holds the version, the SHA-256 of its text as it is in git, and the time it was
    applied (now, not a fixed or NULL time). A second run applies nothing."""
    before = dt.datetime.now(dt.timezone.utc)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    applied = warehouse.apply_migrations(con)
    after = dt.datetime.now(dt.timezone.utc)
    files = sorted((warehouse.MIGRATIONS_DIR).glob("*.sql"))
    assert applied == [f.stem for f in files]
    assert applied[0] == "001_ingest" and applied[3] == "004_events_name_their_compression" and len(applied) == 24
    rows = con.execute("SELECT version, checksum, applied_at FROM schema_migrations").fetchall()
    assert [r[0] for r in rows] == applied
    for (version, checksum, applied_at), file in zip(rows, files, strict=True):
        assert checksum == hashlib.sha256(file.read_bytes()).hexdigest(), version
        assert before - dt.timedelta(seconds=1) <= applied_at <= after + dt.timedelta(seconds=1), version
    assert warehouse.apply_migrations(con) == []
    con.close()


def test_refusals_name_every_migration_concerned_in_number_order(tmp_path):
    """Two edited migrations and two unknown ones are named, each list sorted by number, whatever order
    the warehouse recorded them in (the order of `schema_migrations`' rows is not the migrations' order)."""
    path = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(path) as con:
        # rewrite 031 and then 010 with other checksums: their rows are now last, 031 before 010
        for version in ("031_stripe_state", "010_rating"):
            con.execute("DELETE FROM schema_migrations WHERE version = ?", [version])
            con.execute("INSERT INTO schema_migrations VALUES (?, 'edited', now())", [version])
    with pytest.raises(BadInputError, match=r"migration\(s\) 010_rating, 031_stripe_state were applied from "
                                            r"another text"):
        warehouse.connect(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_migrations VALUES ('099_z', 'x', now()), ('098_a', 'x', now()), "
                "('100_b', 'x', now())")
    con.close()
    with pytest.raises(BadInputError, match=r"\(migration\(s\) 098_a, 099_z, 100_b unknown here\)"):
        warehouse.connect(path)


def test_a_failed_migration_names_duckdbs_reason(tmp_path):
    """The refusal of a migration the data does not allow carries DuckDB's reason (here: migration 003
    gives every event its file's manifest id, and an event whose file has no manifest entry leaves
    file_id NULL in a NOT NULL column), not only the migration's name."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE schema_migrations (version VARCHAR NOT NULL, checksum VARCHAR NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL)")
    for file in warehouse.migration_files()[:2]:   # 001 and 002, as an older metering left them
        con.execute(file.read_text())
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [file.stem, warehouse.migration_checksum(file.read_text())])
    con.execute("INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, source_file, "
                "source_line, file_hash, ingested_at) VALUES ('e1', 'c', 'api_calls', now(), current_date, 'f.jsonl', "
                "1, 'no-such-manifest-entry', now())")
    con.close()
    with pytest.raises(BadInputError, match=r"migration 003_events_name_their_file_by_id cannot be applied to the "
                                            r"data stored: Constraint Error: NOT NULL constraint failed: "
                                            r"usage_events_by_file_id\.file_id \(rolled back"):
        warehouse.connect(tmp_path / "w.duckdb")


# --- the DDL the code relies on ---------------------------------------------------------------------------

# (table, column, type, NOT NULL, DEFAULT) as metering/migrations/ make them, each for a reason the code
# depends on: money and quantities are exact DECIMALs, never DOUBLE (DESIGN: no float anywhere on the path to
# an amount); amounts in minor units are BIGINT (a 2^31 - 1 = 2,147,483,647 cap is 21.4M in a 2-decimal
# currency, and 2.1 billion JPY); the keys every write and dedupe goes by are NOT NULL; JSON columns are JSON
# (their readers use ->> and json_ functions on them); counters a row is created without start at 0.
SCHEMA = [
    ("schema_migrations", "version", "VARCHAR", True, None),   # made by warehouse.py itself, not a migration
    ("schema_migrations", "checksum", "VARCHAR", True, None),
    ("schema_migrations", "applied_at", "TIMESTAMP WITH TIME ZONE", True, None),
    ("usage_events", "event_id", "VARCHAR", True, None),
    ("usage_events", "customer_id", "VARCHAR", True, None),
    ("usage_events", "value", "DECIMAL(38,12)", False, None),
    ("usage_events", "file_id", "BIGINT", True, None),
    ("usage_quarantine", "value", "DECIMAL(38,12)", False, None),
    ("ingested_files", "rows_quarantined", "BIGINT", True, None),
    ("ingested_files", "value_read", "DECIMAL(38,12)", False, None),
    ("usage_aggregates", "quantity", "DECIMAL(38,12)", True, None),
    ("rated_usage", "amount_unrounded", "DECIMAL(38,24)", False, None),
    ("rated_usage", "amount", "DECIMAL(38,2)", False, None),
    ("rated_usage", "amount_minor", "BIGINT", True, None),
    ("invoice_previews", "total_minor", "BIGINT", True, None),
    ("rating_adjustments", "delta_minor", "BIGINT", True, None),
    ("rated_meters", "definition", "JSON", True, None),
    ("stripe_push_ledger", "value", "DECIMAL(38,12)", True, None),
    ("stripe_push_ledger", "attempts", "INTEGER", True, "0"),
    ("stripe_push_ledger", "raw_events", "BIGINT", True, "0"),
    ("stripe_invoice_items", "attempts", "INTEGER", True, "0"),
    ("stripe_invoice_items", "amount_minor", "BIGINT", True, None),
    ("stripe_webhook_receipts", "raw", "JSON", True, None),
    ("stripe_invoices", "amount_due", "BIGINT", False, None),
    ("dunning_actions", "idempotency_key", "VARCHAR", True, None),
    ("stripe_meter_summaries", "aggregated_value", "DECIMAL(38,12)", False, None),
    ("usage_reconciliation", "explained", "BOOLEAN", True, None),
    ("reconciliation_runs", "settings", "JSON", True, None),
]


def test_the_migrations_make_the_columns_the_code_relies_on(tmp_path):
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        found = {(t, c): (ty, not nullable, default) for t, c, ty, nullable, default in con.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
            "WHERE schema_name = 'main'").fetchall()}
    for table, column, kind, not_null, default in SCHEMA:
        assert found.get((table, column)) == (kind, not_null, default), (table, column)


def test_a_ledger_row_written_without_its_counters_starts_them_at_zero(tmp_path):
    """The DEFAULT 0 of stripe_push_ledger's attempts and raw_events, seen by an insert that names neither."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("INSERT INTO stripe_push_ledger (customer_id, meter, window_start, window_end, revision, value, "
                    "identifier, idempotency_key, status, created_at, window_kind, event_date, event_name, "
                    "event_timestamp, updated_at) VALUES ('c', 'm', now(), now(), 1, 1.5, 'i', 'k', 'pending', "
                    "now(), 'day', current_date, 'metering_m', now(), now())")
        assert con.execute("SELECT attempts, raw_events, value FROM stripe_push_ledger").fetchone() == (
            0, 0, Decimal("1.500000000000"))


def test_work_too_big_for_the_memory_limit_given_is_bad_input_naming_the_limit(tmp_path):
    """`open_warehouse(memory_limit=...)`: an Out of Memory error inside the block is the user's limit being
    too small for the work, told as bad input naming that limit (exit 3), not DuckDB's traceback."""
    with pytest.raises(BadInputError, match=r"memory limit 64MB is too small for this work: Out of Memory Error"):
        with warehouse.open_warehouse(tmp_path / "w.duckdb", memory_limit="64MB", threads=1) as con:
            # a list of 30M BIGINTs is 240MB held by one aggregate state, which cannot spill
            con.execute("SELECT list(i) FROM range(30000000) t(i)").fetchall()


def test_migration_003_numbers_an_older_warehouses_files_in_ingestion_order(tmp_path):
    """file_id follows ingestion time, file hash only breaking a tie: here the hashes sort against the
    times (hash-z came first), so numbering by hash alone (z last) is told apart. Expected by hand:
    hash-z (Oct 1) = 1; hash-a and hash-b (both Oct 2, tie broken by hash) = 2 and 3."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE schema_migrations (version VARCHAR NOT NULL, checksum VARCHAR NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL)")
    for file in warehouse.migration_files()[:2]:   # the schema as 001 and 002 left it
        con.execute(file.read_text())
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [file.stem, warehouse.migration_checksum(file.read_text())])
    for fh, at in [("hash-b", "2026-10-02 00:00:00+00"), ("hash-z", "2026-10-01 00:00:00+00"),
                   ("hash-a", "2026-10-02 00:00:00+00")]:
        con.execute("INSERT INTO ingested_files (file_hash, path, format, rows_read, rows_accepted, rows_quarantined, "
                    "duplicates_dropped, ingested_at) VALUES (?, ?, 'jsonl', 1, 1, 0, 0, ?)", [fh, f"{fh}.jsonl", at])
        con.execute("INSERT INTO usage_events VALUES (?, 'c', 'api_calls', TIMESTAMPTZ '2026-10-01 00:00:00+00', "
                    "DATE '2026-10-01', NULL, '{}', NULL, ?, 1, ?, ?)", [f"{fh}-1", f"{fh}.jsonl", fh, at])
    con.close()
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        assert con.execute("SELECT file_hash, file_id FROM ingested_files ORDER BY file_id").fetchall() == [
            ("hash-z", 1), ("hash-a", 2), ("hash-b", 3)]
        assert con.execute("SELECT event_id, file_id FROM usage_events ORDER BY file_id").fetchall() == [
            ("hash-z-1", 1), ("hash-a-1", 2), ("hash-b-1", 3)]
