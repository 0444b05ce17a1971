"""Raw usage ingestion: read raw log files, validate, de-duplicate, load into the warehouse.

- `contract`: the raw event contract and the closed set of quarantine reasons.
- `readers`: one reader per format (JSON lines, gzip JSON lines, CSV, Parquet) into one staging shape.
- `validate`: the row rules (SQL) and the clean-event schema (pandera on Polars).
- `dedupe`: exact duplicates dropped, conflicting duplicates quarantined (first ingested wins).
- `load`: one file per transaction, manifest and conservation check included.
- `generate`: deterministic sample data with every defect the validator knows.
"""

from metering.ingest.contract import REASONS
from metering.ingest.load import IngestResult, expand_paths, ingest_file, ingest_files

__all__ = ["REASONS", "IngestResult", "expand_paths", "ingest_file", "ingest_files"]
