"""Hypothesis properties of rating: monotone graduated totals, exact breakdowns, determinism (I5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.rating.pricing import rate

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TIERED = """
- meter: tokens
  model: {model}
  tiers:
    - {{up_to: 1000, unit_amount: "0.003", flat_amount: "1.25"}}
    - {{up_to: "250000.5", unit_amount: "0.0000123"}}
    - {{up_to: null, unit_amount: "0.000000000007", flat_amount: "0.01"}}
"""
quantities = st.decimals(min_value=0, max_value=10**15, places=12, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(a=quantities, b=quantities)
def test_graduated_totals_never_decrease(make_rules, rate_q, a, b):
    rules = make_rules(TIERED.format(model="graduated"))
    lo, hi = sorted((a, b))
    out = rate_q(rules, {0: lo}), rate_q(rules, {0: hi})
    assert out[0]["amount_unrounded"].item() <= out[1]["amount_unrounded"].item()
    assert out[0]["amount_minor"].item() <= out[1]["amount_minor"].item()


@SETTINGS
@given(q=quantities, model=st.sampled_from(["graduated", "volume"]))
def test_tier_breakdown_sums_to_the_unrounded_amount(make_rules, rate_q, q, model):
    rules = make_rules(TIERED.format(model=model))
    line = rate_q(rules, {0: q}).row(0, named=True)
    tiers = json.loads(line["tiers"])
    assert sum((Decimal(t["amount"]) for t in tiers), Decimal(0)) == line["amount_unrounded"]
    assert sum((Decimal(t["units"]) for t in tiers), Decimal(0)) == q
    for t in tiers:   # each tier amount = units x unit price + flat, exactly
        assert Decimal(t["amount"]) == Decimal(t["units"]) * Decimal(t["unit_amount"]) + Decimal(t["flat_amount"])
    # rounding once, half up, to the cent
    assert line["amount_minor"] == int((line["amount_unrounded"] * 100 + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))


MIXED = """
- {name: calls, meter: api_calls, model: graduated, included: 100, tiers: [{up_to: 1000, unit_amount: "0.01"}, {up_to: null, unit_amount: "0.005"}]}
- {name: tok, meter: tokens, model: package, package_size: 1000, package_amount: "0.07"}
- {name: gb, meter: storage_gb, model: volume, tiers: [{up_to: 10, unit_amount: "1.5"}, {up_to: null, unit_amount: "1.25"}]}
- {name: seats, meter: seats, model: per_unit, unit_amount: "9.99"}
- {name: fee, model: flat, amount: "10.00"}
- {name: min, model: minimum, amount: "50.00"}
"""


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rating_is_independent_of_row_order(make_rules, segment, data):
    rules = make_rules(MIXED)
    n = data.draw(st.integers(1, 8))
    segs, qs = [], []
    for c in range(n):
        seg = segment(customer=f"c{c}")
        segs.append(seg)
        for cid in range(4):
            for _ in range(data.draw(st.integers(0, 2))):   # several partial rows per line add up
                qs.append({"customer_id": seg["customer_id"], "period_start": seg["period_start"],
                           "segment_start": seg["segment_start"], "plan": "t", "plan_version": "v1", "charge_id": cid,
                           "quantity": data.draw(st.decimals(0, 10**6, places=3, allow_nan=False))})
    schema = {"customer_id": pl.String, "period_start": pl.Date, "segment_start": pl.Date, "plan": pl.String,
              "plan_version": pl.String, "charge_id": pl.Int32, "quantity": pl.Decimal(38, 12)}
    base = rate(pl.DataFrame(segs), pl.DataFrame(qs, schema=schema), rules)
    perm_s = data.draw(st.permutations(segs))
    perm_q = data.draw(st.permutations(qs))
    shuffled = rate(pl.DataFrame(perm_s), pl.DataFrame(perm_q, schema=schema), rules)
    assert shuffled.equals(base)


SCRIPT = """
import hashlib, sys
from metering.rules.plans import load_rules
from metering.rating import bench
from metering.rating.pricing import rate
from metering.rating.aggregate import charge_quantities
from metering.customers import billing_segments
rules = load_rules(sys.argv[1])
assignments, usage = bench.synthetic_usage(rules, 60_000)
usage = usage.sample(fraction=1.0, shuffle=True, seed=int(sys.argv[2]))
segments = billing_segments(assignments, rules, bench.MONTH)
rated = rate(segments, charge_quantities(usage, segments, rules), rules)
print(hashlib.sha256(rated.write_csv().encode()).hexdigest())
"""


def test_rating_is_identical_across_thread_counts_and_chunk_orders(tmp_path):
    digests = set()
    for threads, seed in (("1", "1"), ("2", "2")):
        env = {**os.environ, "POLARS_MAX_THREADS": threads, "TZ": "Asia/Tokyo" if threads == "1" else "America/Lima"}
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(PROJECT_ROOT / "rating_rules"), seed], env=env,
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
