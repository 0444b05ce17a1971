"""The ingestion benchmark: full ingestion vs DuckDB's floor, each in a fresh process, same run.

The floor is what DuckDB alone needs to read the same file, drop unparsable rows, de-duplicate by
`event_id` and group by customer x meter x day (no validation, no quarantine, nothing stored).
Each measurement runs in a child process that reports its own wall time (from before it imports
what it uses to after the last statement) and its peak resident memory. With `repeat` above one,
every figure is the median of that many runs, the floor and the ingestion alternating.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from metering import config
from metering.errors import BadInputError
from metering.ingest.readers import literal_glob, parquet_scan
from metering.warehouse import database_files, remove_database, sql_string


def _floor_sql(path: Path, fmt: str) -> str:
    p = sql_string(literal_glob(str(path)))
    cols = "{'event_id': 'VARCHAR', 'customer_id': 'VARCHAR', 'meter': 'VARCHAR', 'timestamp': 'VARCHAR'}"
    source = {
        "parquet": f"SELECT event_id, customer_id, meter, timestamp FROM {parquet_scan(path)}",
        "jsonl": f"SELECT * FROM read_json({p}, format = 'newline_delimited', ignore_errors = true, columns = {cols})",
        "jsonl.gz": f"SELECT * FROM read_json({p}, format = 'newline_delimited', ignore_errors = true, "
                    f"compression = 'gzip', columns = {cols})",
        "csv": f"SELECT event_id, customer_id, meter, timestamp FROM read_csv({p}, all_varchar = true, "
               f"ignore_errors = true, header = true)",
    }[fmt]
    return f"""
        WITH src AS ({source}),
        parsed AS (
            SELECT event_id, customer_id, meter,
                   coalesce(try_cast(timestamp AS TIMESTAMPTZ), epoch_ms(try_cast(timestamp AS BIGINT))::TIMESTAMPTZ) AS t
            FROM src),
        deduped AS (
            SELECT event_id, first(customer_id) AS customer_id, first(meter) AS meter, first(t) AS t
            FROM parsed WHERE event_id IS NOT NULL AND t IS NOT NULL GROUP BY event_id)
        SELECT count(*) FROM (SELECT customer_id, meter, t::DATE, count(*) FROM deduped GROUP BY ALL)"""


def _peak_rss_bytes(fallback: int) -> int:
    """This process's peak resident memory. Linux keeps ru_maxrss across exec (so a child of a big
    parent would report the parent's peak); VmHWM in /proc belongs to the new image only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return fallback


def _child(argv: list[str]) -> None:
    """Entry point of a measured child process; prints one JSON line."""
    import resource

    kind = argv[0]
    started = time.perf_counter()
    out: dict = {}
    if kind == "floor":
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        out["groups"] = con.execute(_floor_sql(Path(argv[1]), argv[2])).fetchone()[0]
    else:
        from datetime import datetime, timezone

        from metering import warehouse
        from metering.ingest import ingest_files

        with warehouse.open_warehouse(argv[2], memory_limit=argv[3] or None) as con:
            results = ingest_files(con, [argv[1]], now=datetime(2030, 1, 1, tzinfo=timezone.utc))
        out["result"] = results[0].as_dict()
    out["seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_bytes"] = _peak_rss_bytes(usage.ru_maxrss * 1024)
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(out))


def _measure(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "metering.ingest.bench", *args], capture_output=True, text=True,
                          env={**os.environ, "METERING_LOG_LEVEL": "WARNING"})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest)."""
    return statistics.median(values), min(values), max(values)


@dataclass
class BenchReport:
    """Every run's figures: `floors[i]` and `ingests[i]` were measured back to back, in that order."""

    events: int
    fmt: str
    rows: int
    file_bytes: int
    generate_seconds: float
    floors: list[dict]
    ingests: list[dict]
    adds: list[dict] = field(default_factory=list)
    add_events: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """Each run's ingestion time over the floor measured just before it."""
        return [i["seconds"] / f["seconds"] for f, i in zip(self.floors, self.ingests)]

    def lines(self) -> list[str]:
        gib = 1024 ** 3
        runs = len(self.ingests)

        def figures(samples: list[dict]) -> tuple[float, str, float, float]:
            """Median seconds, the range when there are several runs, highest peak, median CPU."""
            median, low, high = _spread([s["seconds"] for s in samples])
            spread = f"  [{runs} runs: {low:.2f}-{high:.2f} s]" if runs > 1 else ""
            return (median, spread, max(s["peak_rss_bytes"] for s in samples) / gib,
                    statistics.median(s["cpu_seconds"] for s in samples))

        flo, flo_spread, flo_peak, flo_cpu = figures(self.floors)
        ing, ing_spread, ing_peak, ing_cpu = figures(self.ingests)
        ratio, ratio_low, ratio_high = _spread(self.ratios)
        ratio_spread = f", {ratio_low:.2f}-{ratio_high:.2f}x by run" if runs > 1 else ""
        out = [
            f"ingest benchmark: {self.events:,} events ({self.rows:,} rows) as {self.fmt}, "
            f"{self.file_bytes / 1e6:,.0f} MB (generated in {self.generate_seconds:.1f} s)"
            + (f"; medians of {runs} runs, peaks the highest" if runs > 1 else ""),
            f"  floor (DuckDB read + dedupe + group): {flo:7.2f} s  {self.rows / flo:>12,.0f} events/s  "
            f"peak {flo_peak:.2f} GiB  cpu {flo_cpu:.1f} s{flo_spread}",
            f"  full ingestion:                       {ing:7.2f} s  {self.rows / ing:>12,.0f} events/s  "
            f"peak {ing_peak:.2f} GiB  cpu {ing_cpu:.1f} s  ({ratio:.2f}x floor wall{ratio_spread}, "
            f"{ing_cpu / flo_cpu:.2f}x floor cpu){ing_spread}",
        ]
        outcomes = sorted({(i["result"]["rows_accepted"], i["result"]["rows_quarantined"],
                            i["result"]["duplicates_dropped"]) for i in self.ingests})
        out += [f"  accepted {accepted:,}, quarantined {quarantined:,}, duplicates dropped {dropped:,}"
                for accepted, quarantined, dropped in outcomes]
        if len(outcomes) > 1:  # each run ingests the same file into a new warehouse: a bug if they differ
            out.append("  warning: the runs disagree on the outcome")
        if self.adds:
            add, add_spread, add_peak, add_cpu = figures(self.adds)
            out.append(f"  add {self.add_events:,} events to the loaded warehouse: {add:.2f} s, "
                       f"peak {add_peak:.2f} GiB, cpu {add_cpu:.1f} s{add_spread}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _of(run: int, repeat: int) -> str:
    return f" (run {run} of {repeat})" if repeat > 1 else ""


def _copy_warehouse(source: Path, target: Path) -> None:
    remove_database(target)
    for src, dst in zip(database_files(source), database_files(target)):
        if src.exists():
            shutil.copyfile(src, dst)


def run_bench(events: int, fmt: str, add_events: int = 1_000_000, memory_limit: str = "2GB",
              workdir: Path | None = None, keep: bool = False, repeat: int = 1,
              echo: Callable[[str], None] = print) -> BenchReport:
    """Generate the files once, then measure `repeat` times: the floor, then the full ingestion into a
    new warehouse, alternating, so that each ratio compares two runs made moments apart (a shared
    host's speed can drift by 10-25 % within minutes); then the added file, each time into a fresh
    copy of the loaded warehouse."""
    from metering.ingest.generate import GenerateConfig, generate

    try:
        if workdir is None:
            config.data_dir().mkdir(parents=True, exist_ok=True)
        base = workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=config.data_dir()))
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{exc.filename or workdir or config.data_dir()}: cannot create the bench's working "
                            f"folder: {exc.strerror or exc}") from None
    try:
        echo(f"generating {events:,} events as {fmt} in {base} ...")
        started = time.perf_counter()
        cfg = GenerateConfig(seed=7, customers=1000, events=events, formats=(fmt,), single_file=True,
                             conflict_share=0.0001, late_share=0.0, hostile_share=0.0)
        summary = generate(cfg, base / "raw")
        gen_seconds = time.perf_counter() - started
        path = summary.files[0]
        wh = base / "warehouse.duckdb"
        floors, ingests = [], []
        for run in range(1, repeat + 1):
            echo(f"measuring the floor{_of(run, repeat)} ...")
            floors.append(_measure(["floor", str(path), fmt]))
            echo(f"measuring full ingestion{_of(run, repeat)} ...")
            remove_database(wh)
            ingests.append(_measure(["ingest", str(path), str(wh), memory_limit]))
        report = BenchReport(events=events, fmt=fmt, rows=summary.rows, file_bytes=path.stat().st_size,
                             generate_seconds=gen_seconds, floors=floors, ingests=ingests, add_events=add_events)
        if add_events:
            echo(f"generating {add_events:,} more events ...")
            more = generate(GenerateConfig(seed=8, customers=1000, events=add_events, formats=(fmt,),
                                           single_file=True, late_share=0.0, hostile_share=0.0),
                            base / "more")
            loaded = base / "warehouse-plus.duckdb"
            for run in range(1, repeat + 1):
                echo(f"adding them to the loaded warehouse{_of(run, repeat)} ...")
                _copy_warehouse(wh, loaded)
                report.adds.append(_measure(["ingest", str(more.files[0]), str(loaded), memory_limit]))
        report.notes.append(f"{os.cpu_count()} CPU(s); the machine may be shared: compare against the floor "
                            "measured in the same run, not against absolute numbers")
        return report
    finally:
        if not keep and workdir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
