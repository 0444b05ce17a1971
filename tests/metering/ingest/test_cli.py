"""The CLI: generate, ingest, exit codes."""

from __future__ import annotations

import gzip
import json

from click.testing import CliRunner

from metering.cli import cli
from tests.metering.ingest.conftest import event, write_lines


def test_generate_then_ingest(tmp_path, isolated_env):
    runner = CliRunner()
    gen = runner.invoke(cli, ["generate", "--events", "500", "--customers", "5", "--end", "2026-10-04"])
    assert gen.exit_code == 0, gen.output
    assert (isolated_env / "customers.csv").exists() and len(list((isolated_env / "raw").iterdir())) == 4
    first = runner.invoke(cli, ["ingest", str(isolated_env / "raw"), "--as-of", "2026-11-01"])
    assert first.exit_code == 0, first.output
    assert "4 file(s) ingested, 0 skipped" in first.output and "500 events accepted" in first.output
    again = runner.invoke(cli, ["ingest", str(isolated_env / "raw")])
    assert again.exit_code == 0 and "0 file(s) ingested, 4 skipped" in again.output


def test_ingest_json_output_and_warehouse_option(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [event("a"), event("a"), "{"])
    result = CliRunner().invoke(cli, ["ingest", str(path), "--json", "--warehouse", str(tmp_path / "x.duckdb"),
                                      "--as-of", "2026-11-01"])
    assert result.exit_code == 0, result.output
    assert '"rows_accepted": 1' in result.output and '"duplicates_dropped": 1' in result.output
    assert (tmp_path / "x.duckdb").exists()


def test_unreadable_file_exit_code_3(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"event_id": "a"}\n' * 1000)[:40])
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 3
    assert f"error: {path}: cannot decompress (truncated or corrupt gzip)" in result.output
    assert "later file" not in result.output   # it was the last (and only) file


def test_a_missing_file_is_bad_input_and_nothing_before_it_is_ingested(tmp_path):
    """A file that does not exist was click's usage error (exit 2) for `ingest` alone: `rate --usage`,
    `rerate --customers` and `rules validate` make it bad input (exit 3) naming the file. Every path is
    checked before the first file is read, so none of them is ingested."""
    present = tmp_path / "a.jsonl"
    present.write_text(json.dumps({"event_id": "e1", "customer_id": "c", "meter": "api_calls",
                                   "timestamp": "2026-10-01T00:00:00Z"}) + "\n")
    db = tmp_path / "w.duckdb"
    result = CliRunner().invoke(cli, ["ingest", "--warehouse", str(db), str(present), str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 3, result.output
    assert f"error: {tmp_path / 'missing.jsonl'}: no such file or folder" in result.output
    assert not db.exists()


def test_usage_errors_exit_code_2(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest"]).exit_code == 2
    assert runner.invoke(cli, ["generate", "--formats", "xml"]).exit_code == 2
    for args in (["generate", "--help"], ["ingest", "--help"], ["bench", "ingest", "--help"]):
        assert runner.invoke(cli, args).exit_code == 0


def test_memory_limit_option_is_validated(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [event("a")])
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(path), "--memory-limit", "1GB'; SELECT 1; --"]).exit_code == 2
    ok = runner.invoke(cli, ["ingest", str(path), "--memory-limit", "512MB", "--as-of", "2026-11-01"])
    assert ok.exit_code == 0, ok.output


def test_bench_runs_end_to_end_into_a_data_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    """A small bench: the generated rows are all accounted for, and its temp folder is removed."""
    import re

    data = tmp_path / "not" / "yet"
    monkeypatch.setenv("METERING_DATA_DIR", str(data))
    result = CliRunner().invoke(cli, ["bench", "ingest", "--events", "2000", "--add", "1000", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = int(re.search(r"events \(([\d,]+) rows\)", result.output).group(1).replace(",", ""))
    kept = re.search(r"accepted ([\d,]+), quarantined ([\d,]+), duplicates dropped ([\d,]+)", result.output)
    assert rows > 2000 and sum(int(n.replace(",", "")) for n in kept.groups()) == rows
    assert "add 1,000 events to the loaded warehouse" in result.output
    assert list(data.iterdir()) == []


def test_bench_working_folder_that_cannot_be_created_is_bad_input(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path / "a-file" / "data"))
    result = CliRunner().invoke(cli, ["bench", "ingest", "--events", "1000"])
    assert result.exit_code == 3
    assert f"{tmp_path / 'a-file' / 'data'}: cannot create the bench's working folder" in result.output


def test_bench_report_gives_medians_ranges_and_the_median_of_paired_ratios():
    """Hand-made runs: the ratio is the median of each run's ingestion over the floor measured just
    before it (4.0), not the ratio of the medians (10 / 3 = 3.33); peaks are the highest."""
    from metering.ingest.bench import BenchReport

    gib = 1024 ** 3

    def run(seconds: float, cpu: float, peak_gib: float, accepted: int = 0) -> dict:
        result = {"rows_accepted": accepted, "rows_quarantined": 5, "duplicates_dropped": 5}
        return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": peak_gib * gib, "result": result}

    report = BenchReport(
        events=1000, fmt="parquet", rows=1010, file_bytes=10**6, generate_seconds=1.0,
        floors=[run(2.0, 4.0, 1.0), run(4.0, 8.0, 1.5), run(3.0, 6.0, 1.25)],
        ingests=[run(8.0, 16.0, 2.0, 1000), run(10.0, 20.0, 2.5, 1000), run(12.0, 24.0, 2.25, 1000)],
        adds=[run(1.5, 3.0, 0.5), run(1.75, 3.5, 0.75), run(2.25, 4.5, 0.5)], add_events=100)
    assert report.ratios == [4.0, 2.5, 4.0]
    text = "\n".join(report.lines())
    assert "medians of 3 runs" in text
    assert "floor (DuckDB read + dedupe + group):    3.00 s           337 events/s  peak 1.50 GiB  cpu 6.0 s" \
           "  [3 runs: 2.00-4.00 s]" in text
    assert "full ingestion:                         10.00 s           101 events/s  peak 2.50 GiB  cpu 20.0 s" \
           "  (4.00x floor wall, 2.50-4.00x by run, 3.33x floor cpu)  [3 runs: 8.00-12.00 s]" in text
    assert "accepted 1,000, quarantined 5, duplicates dropped 5" in text and "disagree" not in text
    assert "add 100 events to the loaded warehouse: 1.75 s, peak 0.75 GiB, cpu 3.5 s  [3 runs: 1.50-2.25 s]" in text

    report.ingests[1]["result"] = {"rows_accepted": 999, "rows_quarantined": 6, "duplicates_dropped": 5}
    assert "warning: the runs disagree on the outcome" in "\n".join(report.lines())


def test_bench_repeat_measures_each_step_that_many_times(tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["bench", "ingest", "--events", "2000", "--add", "1000", "--repeat", "2"])
    assert result.exit_code == 0, result.output
    assert "medians of 2 runs" in result.output
    ranges = re.findall(r"\[2 runs: ([\d.]+)-([\d.]+) s\]", result.output)
    assert len(ranges) == 3 and all(float(low) <= float(high) for low, high in ranges)  # floor, ingestion, add
    assert len(re.findall(r"^  accepted ", result.output, re.M)) == 1  # both runs ingested the same way
    assert CliRunner().invoke(cli, ["bench", "ingest", "--repeat", "0"]).exit_code == 2


def test_an_unreadable_file_names_the_later_files_it_stops(tmp_path):
    """Folder of four files, the second a cut-short gzip: the first is ingested, the run stops at the
    second (exit 3, the warehouse as it was for it), and the message names the two files after it,
    which were not read, so the operator knows to run again."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for day in (1, 3, 4):
        write_lines(raw / f"usage-2026-10-0{day}.jsonl", [event(f"e{day}")])
    bad = raw / "usage-2026-10-02.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"event_id": "a"}\n' * 1000)[:40])
    db = tmp_path / "w.duckdb"
    result = CliRunner().invoke(cli, ["ingest", "--warehouse", str(db), str(raw), "--as-of", "2026-11-01"])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {bad}: cannot decompress (truncated or corrupt gzip): Truncated compressed stream; 2 later file(s) "
        "not read (usage-2026-10-03.jsonl, usage-2026-10-04.jsonl): run again once it is fixed or moved (the 1 "
        "before it are kept and will be skipped)")
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT event_id FROM usage_events").fetchall() == [("e1",)]



def test_a_first_file_unreadable_names_the_later_ones_and_no_kept_ones(tmp_path):
    raw = tmp_path / "raw"
    write_lines(raw / "usage-2026-10-02.jsonl", [event("e2")])
    bad = raw / "usage-2026-10-01.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"event_id": "a"}\n' * 1000)[:40])
    result = CliRunner().invoke(cli, ["ingest", "--warehouse", str(tmp_path / "w.duckdb"), str(raw)])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1].endswith(
        "; 1 later file(s) not read (usage-2026-10-02.jsonl): run again once it is fixed or moved")
