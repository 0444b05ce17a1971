"""`metering report` and `metering reconcile` through the real CLI group."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from metering.cli import cli


def test_report_command_writes_default_folder(reconciled_warehouse, isolated_env):
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10"])
    assert result.exit_code == 0, result.output
    folder = isolated_env / "reports" / "2026-10"
    assert (folder / "report.html").exists() and (folder / "report.xlsx").exists()
    assert "usd: rated 172.00 USD, invoiced 162.76 USD, match rate 33.3%, money at risk 11.15 USD" in result.output


def test_report_command_out_folder(reconciled_warehouse, tmp_path):
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "discrepancies.csv").exists()


@pytest.mark.parametrize("command", ["report", "reconcile"])
@pytest.mark.parametrize("period, says", [("October", "'October' is not a month like 2026-10"),
                                          ("2026-13", "'2026-13' is not a month"),
                                          ("9999-12", "'9999-12' is outside 2000-01 .. 9998-12"),
                                          ("0001-01", "'0001-01' is outside 2000-01 .. 9998-12")])
def test_bad_period_is_a_usage_error_naming_the_option(isolated_env, command, period, says):
    pull = ["--no-pull"] if command == "reconcile" else []
    result = CliRunner().invoke(cli, [command, "--period", period, *pull])
    assert result.exit_code == 2
    assert "Invalid value for '--period'" in result.output and says in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["reconcile", "--period", "2026-10", "--no-pull"], ["report", "--period", "2026-10"]])
def test_a_warehouse_that_does_not_exist_is_refused_not_created(isolated_env, tmp_path, args):
    typo = tmp_path / "typo.duckdb"
    result = CliRunner().invoke(cli, [*args, "--warehouse", str(typo)])
    assert result.exit_code == 3
    assert f"error: {typo}: no warehouse there" in result.output
    assert not typo.exists()


def test_report_reads_the_warehouse_without_writing_it(reconciled_warehouse, tmp_path):
    """It opened the warehouse read-write: it applied pending migrations, and could not run beside another
    process reading the file (an analyst's read-only session, the sensor's manifest check). Read-only now:
    it runs beside such a reader, and a warehouse last written by an older metering is refused, named,
    and left as it was."""
    import subprocess
    import sys

    import duckdb

    reader = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); sys.stdin.read()", str(reconciled_warehouse)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "open\n"
        written = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(tmp_path / "r")])
    finally:
        reader.communicate("")
    assert written.exit_code == 0, written.output
    with duckdb.connect(str(reconciled_warehouse)) as con:
        newest = con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        con.execute("DELETE FROM schema_migrations WHERE version = ?", [newest])
    refused = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(tmp_path / "r2")])
    assert refused.exit_code == 3
    assert (f"error: {reconciled_warehouse}: the warehouse's schema is behind this version of metering (not yet "
            f"applied: {newest}); the report only reads the warehouse, so it does not bring it up to date: reconcile "
            f"the month again") in refused.output
    assert not (tmp_path / "r2").exists()
    with duckdb.connect(str(reconciled_warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM schema_migrations WHERE version = ?", [newest]).fetchone() == (0,)


def test_reconcile_without_stripe_on_empty_warehouse_warns(isolated_env, tmp_path):
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    result = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10", "--no-pull", "--warehouse",
                                      str(tmp_path / "w.duckdb")])
    assert result.exit_code == 0, result.output
    assert "reconciled 2026-10: 0 customer x meter rows, 0 invoices" in result.output
    assert "warning: nothing to reconcile for 2026-10" in result.output


def test_report_refuses_a_month_never_reconciled(isolated_env, tmp_path):
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--warehouse", str(tmp_path / "w.duckdb"),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 3
    assert "nothing reconciled for 2026-10: either it has not been reconciled (run `metering reconcile --period " \
           "2026-10` first)" in result.output
    assert not (tmp_path / "r").exists()


def test_report_of_a_month_reconciled_with_nothing_to_compare_says_so(isolated_env, tmp_path):
    """`metering reconcile` passes a month with nothing to compare and writes no row; the report then told
    the user to run the very command just run ("has not been reconciled"): it names both cases now."""
    from metering import warehouse

    path = tmp_path / "w.duckdb"
    warehouse.connect(path).close()
    reconciled = CliRunner().invoke(cli, ["reconcile", "--period", "2027-03", "--no-pull", "--warehouse", str(path)])
    assert reconciled.exit_code == 0, reconciled.output
    result = CliRunner().invoke(cli, ["report", "--period", "2027-03", "--warehouse", str(path),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 3
    assert result.output == (
        f"error: {path}: nothing reconciled for 2027-03: either it has not been reconciled (run `metering reconcile "
        "--period 2027-03` first), or it was but had nothing to compare: no rated usage, pushes or Stripe invoices "
        "for the month (rate its usage with `metering rerate --from YYYY-MM-DD --to YYYY-MM-DD`, then reconcile "
        "again)\n")
    assert not (tmp_path / "r").exists()


def test_report_help_documents_the_exit_code_of_a_month_with_nothing_reconciled():
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert "Exits 3, writing nothing, when the warehouse does not exist or holds no" in result.output
    assert "never reconciled, or its reconciliation had nothing to compare" in " ".join(result.output.split())


def test_report_command_match_rate_of_a_currency_without_usage_rows_is_na(reconciled_warehouse):
    """An invoice-only currency (a flat fee) printed "match rate 100.0%" with no usage row to match."""
    from metering import warehouse

    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_f' AS customer_id, 'eur' AS currency)
                       FROM invoice_reconciliation WHERE customer_id = 'cus_j'""")
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10"])
    assert result.exit_code == 0, result.output
    assert "  eur: rated 0.00 EUR, invoiced 0.00 EUR, match rate n/a, money at risk 0.00 EUR\n" in result.output
    assert "usd: rated 172.00 USD, invoiced 162.76 USD, match rate 33.3%, money at risk 11.15 USD" in result.output


def test_report_out_folder_that_cannot_be_created_is_bad_input(reconciled_warehouse, tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should go\n")
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(tmp_path / "taken" / "r")])
    assert result.exit_code == 3
    assert f"error: --out: cannot create the folder {tmp_path / 'taken' / 'r'}" in result.output


def test_reconcile_pull_without_key_is_bad_input(isolated_env):
    result = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10"])
    assert result.exit_code == 3
    assert "STRIPE_API_KEY is not set" in result.output


def _file_size_limit(limit: int):
    """For a child process: files may not grow past `limit` bytes (a write past it fails with EFBIG, as a
    full disk fails with ENOSPC), with the signal that would kill the process ignored."""
    def set_limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_full_disk_leaves_the_previous_report_whole_and_says_so(reconciled_warehouse, tmp_path):
    """A disk that filled up half way: a traceback (exit 1), a new report.html beside the previous run's
    CSVs, and temporary files left behind (audit). Now exit 3 saying so, and the folder as it was."""
    import os
    import subprocess
    import sys

    out = tmp_path / "r"
    assert CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    biggest = max(len(b) for b in before.values())
    done = subprocess.run([sys.executable, "-c", "from metering.cli import main; main()", "report", "--period",
                           "2026-10", "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy(), preexec_fn=_file_size_limit(biggest // 2))
    assert done.returncode == 3, done.stderr
    assert "error: a file could not be written: File too large (free space on its disk" in done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # no temporary file, nothing replaced
