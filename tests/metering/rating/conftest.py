"""Helpers for rating tests: write a small rules folder, rate quantities for one customer."""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from metering.rating.pricing import rate
from metering.rules.model import Rules
from metering.rules.plans import load_rules

PROJECT_ROOT = Path(__file__).resolve().parents[3]
OCT = (dt.date(2026, 10, 1), dt.date(2026, 11, 1))


def write_rules(root: Path, plan_yaml: str, name: str = "t") -> Path:
    """A rules folder with the shipped meters and one plan file (`plans/<name>.yaml`)."""
    (root / "plans").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "rating_rules" / "meters.yaml", root / "meters.yaml")
    (root / "plans" / f"{name}.yaml").write_text(textwrap.dedent(plan_yaml))
    return root


def plan_yaml(charges: str, *, currency: str = "usd", rounding: str = "half_up", plan: str = "t") -> str:
    body = textwrap.indent(textwrap.dedent(charges).strip("\n"), " " * 6)
    return (f"plan: {plan}\ncurrency: {currency}\nversions:\n  - version: \"v1\"\n    effective_from: 2026-01-01\n"
            f"    rounding: {rounding}\n    charges:\n{body}\n")


def one_segment(customer: str = "c1", plan: str = "t", version: str = "v1",
                start: dt.date = OCT[0], end: dt.date = OCT[1], period: tuple = OCT) -> dict:
    return {"customer_id": customer, "period_start": period[0], "period_end": period[1],
            "segment_start": start, "segment_end": end, "plan": plan, "plan_version": version}


def rate_quantities(rules: Rules, quantities: dict[int, str | int | Decimal], segment: dict | None = None) -> pl.DataFrame:
    """Rate charge_id -> quantity for one customer segment (October 2026 unless given)."""
    seg = segment or one_segment()
    segments = pl.DataFrame([seg])   # an optional "cycle_days" key is passed through
    q = pl.DataFrame(
        [{"customer_id": seg["customer_id"], "period_start": seg["period_start"], "segment_start": seg["segment_start"],
          "plan": seg["plan"], "plan_version": seg["plan_version"], "charge_id": cid, "quantity": Decimal(str(v))}
         for cid, v in quantities.items()],
        schema={"customer_id": pl.String, "period_start": pl.Date, "segment_start": pl.Date, "plan": pl.String,
                "plan_version": pl.String, "charge_id": pl.Int32, "quantity": pl.Decimal(38, 12)},
    )
    return rate(segments, q, rules)


@pytest.fixture
def make_rules(tmp_path: Path):
    counter = iter(range(1000))
    cache: dict[tuple, Rules] = {}   # hypothesis calls the test body many times with the same rules

    def _make(charges: str, **kw) -> Rules:
        key = (charges, tuple(sorted(kw.items())))
        if key not in cache:
            root = write_rules(tmp_path / f"rules{next(counter)}", plan_yaml(charges, **kw), kw.get("plan", "t"))
            cache[key] = load_rules(root)
        return cache[key]

    return _make


@pytest.fixture
def rate_q():
    """`rate_q(rules, {charge_id: quantity}, segment=None)`: see `rate_quantities`."""
    return rate_quantities


@pytest.fixture
def segment():
    """`segment(**overrides)`: one customer segment row (see `one_segment`)."""
    return one_segment


STORAGE = "SELECT amount_minor FROM rated_usage WHERE charge = 'storage'"
"""The storage line `bill_storage_october` rates (its amount in minor units)."""


def bill_storage_october(con, rules: Rules, folder: Path, samples_per_day: int, closing: dt.datetime) -> Path:
    """Customer c1 on starter stores 100 GB all October, sampled `samples_per_day` times a day (12:00,
    then every 30 minutes); the month is aggregated and rated at `closing`: a peak of 100 x 0.25 =
    25.00. Returns the customer list written into `folder`."""
    from metering import warehouse
    from metering.customers import load_customers
    from metering.rating import service

    customers = folder / "customers.csv"
    customers.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,"
                         "payment_behavior\nc1,C,c@c.test,usd,,starter,2026-01-01,succeeds\n")
    warehouse.insert_frame(con, "customer_plans", load_customers(customers, rules))
    con.execute("INSERT INTO usage_events SELECT 's' || i, 'c1', 'storage_gb', TIMESTAMPTZ '2026-10-01 12:00:00+00' "
                "+ INTERVAL (i // ?) DAY + INTERVAL (i % ? * 30) MINUTE, DATE '2026-10-01' + CAST(i // ? AS INTEGER), "
                "100, '{}', '{}', 1, i FROM range(31 * ?) t(i)", [samples_per_day] * 4)
    for day in range(1, 32):
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))
    month = dt.date(2026, 10, 1)
    service.write_rated(con, month, service.rate_month(con, rules, month)[0], rules, closing)
    return customers
