"""Edges the mutation audit found unguarded: a split gauge in a first, partial period, the minimum across
a version change, the hourly build's day bounds, ties of a `last` meter across dimension rows, and
unique_count over hours without the property."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from metering import warehouse
from metering.rating import service
from metering.rating.aggregate import build_aggregates, charge_quantities
from metering.rating.pricing import rate
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import write_rules

UTC = dt.timezone.utc
OCT1, NOV1 = dt.date(2026, 10, 1), dt.date(2026, 11, 1)


def two_versions(tmp_path: Path, charges: str, switch: dt.date, meters_extra: str = ""):
    """Plan `t` with versions v1 (from 2026-01-01) and v2 (from `switch`), both with `charges`
    (one line each, YAML flow mappings); `meters_extra` lines are added to the shipped meters."""
    body = "".join(f"      {line.strip()}\n" for line in charges.strip().splitlines())
    text = "plan: t\ncurrency: usd\nversions:\n"
    for version, start in (("v1", "2026-01-01"), ("v2", switch.isoformat())):
        text += f"  - version: \"{version}\"\n    effective_from: {start}\n    rounding: half_up\n    charges:\n{body}"
    root = write_rules(tmp_path / "rules", text)
    if meters_extra:
        meters = root / "meters.yaml"
        meters.write_text(meters.read_text().rstrip("\n") + "\n" + meters_extra)
    return load_rules(root)


def rate_segments(rules, period: tuple, parts: list[tuple], cycle_days: int | None = None) -> pl.DataFrame:
    """Rate one customer's period cut into `parts`: (version, start, end, {charge_id: quantity})."""
    segs = [{"customer_id": "c1", "period_start": period[0], "period_end": period[1], "segment_start": s,
             "segment_end": e, "plan": "t", "plan_version": v} | ({"cycle_days": cycle_days} if cycle_days else {})
            for v, s, e, _ in parts]
    q = pl.DataFrame(
        [{"customer_id": "c1", "period_start": period[0], "segment_start": s, "plan": "t", "plan_version": v,
          "charge_id": cid, "quantity": Decimal(str(qty))} for v, s, _, qs in parts for cid, qty in qs.items()],
        schema={"customer_id": pl.String, "period_start": pl.Date, "segment_start": pl.Date, "plan": pl.String,
                "plan_version": pl.String, "charge_id": pl.Int32, "quantity": pl.Decimal(38, 12)},
    )
    return rate(pl.DataFrame(segs), q, rules)


def insert(con, events: list[tuple]) -> None:
    """(event_id, meter, event_time, value, properties) rows for customer c1."""
    con.executemany(
        "INSERT INTO usage_events VALUES (?, 'c1', ?, ?, CAST(? AS DATE), ?, ?, '{}', 1, 1)",
        [(eid, meter, t, t.date(), value, props) for eid, meter, t, value, props in events],
    )


def segments_oct() -> pl.DataFrame:
    return pl.DataFrame([{"customer_id": "c1", "period_start": OCT1, "period_end": NOV1, "segment_start": OCT1,
                          "segment_end": NOV1, "plan": "t", "plan_version": "v1"}])


# --- pricing: a split gauge in a first, partial period; the minimum across versions -----------------------

def test_split_gauge_in_a_first_partial_period_is_prorated_over_the_period_not_the_cycle(tmp_path):
    """Subscribed Oct 10 (anchor day 1): the first period Oct 10 - Nov 1 is 22 days of a 31-day cycle, and a
    version change on Oct 16 splits it 6 + 16 days. A gauge's split segments are prorated by their days
    over the period's (docs/rating.md: a gauge is not prorated for a first, partial period), so the parts
    add up to the whole: 22 GB x 1.00 = 22.00 -> 22.00 x 6/22 = 6.00 and x 16/22 = 16.00. Prorating by
    the cycle's days instead billed 22 x 6/31 = 4.258 -> 4.26 and 22 x 16/31 = 11.354 -> 11.35 (15.61)."""
    split = dt.date(2026, 10, 16)
    rules = two_versions(tmp_path, '- {name: storage, meter: storage_gb, model: per_unit, unit_amount: "1.00"}', split)
    period = (dt.date(2026, 10, 10), NOV1)
    out = rate_segments(rules, period, [("v1", period[0], split, {0: 22}), ("v2", split, NOV1, {0: 22})],
                        cycle_days=31)
    assert out.select("plan_version", "quantity", "amount_minor").rows() == [
        ("v1", Decimal(22), 600), ("v2", Decimal(22), 1600)]
    assert out["amount_unrounded"].to_list() == [Decimal(6), Decimal(16)]
    assert [json.loads(t)[-1] for t in out["tiers"]] == [{"segment_days": 6, "period_days": 22},
                                                        {"segment_days": 16, "period_days": 22}]


MINIMUM_CHARGES = """
- {name: calls, meter: api_calls, model: per_unit, unit_amount: "1.00"}
- {name: min, model: minimum, amount: "31.00"}
"""


def test_minimum_true_up_lands_on_the_last_segment(tmp_path):
    """Minimum 31.00 in v1 (Oct 1-17, 16 days) and v2 (Oct 17 - Nov 1, 15 days), no usage: the commitment
    is 31 x 16/31 + 31 x 15/31 = 31.00, all of it a true-up, carried (as documented) by the minimum line
    of the plan's LAST segment: v2 3100, v1 0 naming 2026-10-17. Taking the first segment as the carrier
    put the 31.00 on v1 and 0 on v2."""
    split = dt.date(2026, 10, 17)
    rules = two_versions(tmp_path, MINIMUM_CHARGES, split)
    out = rate_segments(rules, (OCT1, NOV1), [("v1", OCT1, split, {}), ("v2", split, NOV1, {})])
    mins = out.filter(pl.col("charge") == "min")
    assert mins.select("plan_version", "amount_minor").rows() == [("v1", 0), ("v2", 3100)]
    v1, v2 = (json.loads(t)[0] for t in mins["tiers"])
    assert v1 == {"minimum": "31", "segment_days": 16, "cycle_days": 31, "true_up_on_segment": "2026-10-17"}
    assert v2["commitment"] == "31" and v2["commitment_from"] == "2026-10-01" and v2["usage_amount"] == "0"
    assert out["amount_minor"].sum() == 3100


def test_minimum_is_one_commitment_across_versions_not_one_per_version(tmp_path):
    """Same split (16 + 15 days), minimum 31.00, calls at 1.00 each: 31 calls, all in v1, are 31.00 of
    usage, which meets the period's one commitment (31 x 16/31 + 31 x 15/31 = 31.00): both minimum lines
    are 0, the period totals 31.00. A commitment per version compared v2's 31 x 15/31 = 15.00 with v2's
    own (zero) usage and billed a 15.00 true-up."""
    split = dt.date(2026, 10, 17)
    rules = two_versions(tmp_path, MINIMUM_CHARGES, split)
    out = rate_segments(rules, (OCT1, NOV1), [("v1", OCT1, split, {0: 31}), ("v2", split, NOV1, {})])
    assert out.select("plan_version", "charge", "amount_minor").rows() == [
        ("v1", "calls", 3100), ("v1", "min", 0), ("v2", "calls", 0), ("v2", "min", 0)]
    assert out["amount_minor"].sum() == 3100


# --- the hourly build: the end day is exclusive ------------------------------------------------------------

def test_hourly_build_excludes_the_end_day_and_refresh_replaces_only_its_day(make_rules):
    """One call at 2026-10-03 12:00Z, one at 2026-10-04 00:30Z. build_aggregates(Oct 3, Oct 4) covers
    event dates Oct 3 only: 1 row (an inclusive end took the Oct 4 call too: 2 rows). Refreshing Oct 4
    and then Oct 3 keeps one row per call: 2 events in usage_aggregates (an inclusive end made the Oct 3
    refresh re-insert the Oct 4 row next to the one already stored: 3 events, a call billed twice)."""
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "1"}
    """)
    events = [("e1", "api_calls", dt.datetime(2026, 10, 3, 12, tzinfo=UTC), None, '{"region":"us"}'),
              ("e2", "api_calls", dt.datetime(2026, 10, 4, 0, 30, tzinfo=UTC), None, '{"region":"us"}')]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        day = build_aggregates(con, rules.meters, dt.date(2026, 10, 3), dt.date(2026, 10, 4))
        assert day.select("event_date", "event_count").rows() == [(dt.date(2026, 10, 3), 1)]
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 4))
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 3))
        assert con.execute("SELECT sum(event_count) FROM usage_aggregates").fetchone()[0] == 2
        assert con.execute("SELECT event_date, sum(event_count) FROM usage_aggregates GROUP BY 1 ORDER BY 1"
                           ).fetchall() == [(dt.date(2026, 10, 3), 1), (dt.date(2026, 10, 4), 1)]
        partials = service.read_aggregates(con, OCT1, NOV1)
    assert charge_quantities(partials, segments_oct(), rules).select("charge_id", "quantity").rows() == [
        (0, Decimal(2))]


# --- a `last` meter over dimension rows: ties on time go to the larger event_id ---------------------------

TEAM_SEATS = "  team_seats:   {aggregation: last, value: value, unit: seat, dimensions: [team]}\n"


def _last_quantity(tmp_path: Path, events: list[tuple]) -> tuple[pl.DataFrame, Decimal, int]:
    """Aggregate `(event_id, team, value, time)` events of a `last` meter with a `team` dimension, priced
    by one unfiltered charge at 1.00: the hourly rows, the period quantity and the amount in cents."""
    rules = two_versions(tmp_path, '- {name: seats, meter: team_seats, model: per_unit, unit_amount: "1.00"}',
                         dt.date(2027, 1, 1), TEAM_SEATS)
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, [(eid, "team_seats", t, Decimal(v), json.dumps({"team": team})) for eid, team, v, t in events])
        partials = build_aggregates(con, rules.meters, OCT1, NOV1)
    q = charge_quantities(partials, segments_oct(), rules)
    assert q["charge_id"].to_list() == [0]
    quantity = q["quantity"].item()
    amount = rate(segments_oct(), q, rules)["amount_minor"].item()
    return partials, quantity, amount


T = dt.datetime(2026, 10, 20, 9, 15, 30, 123456, tzinfo=UTC)


def test_last_within_an_hour_row_keeps_the_larger_event_id(tmp_path):
    """Three seat counts at the same microsecond: (e-a, team x, 1), (e-c, team x, 3), (e-b, team y, 2).
    Ties on time go to the larger event_id (docs/rating.md): e-c, so 3 seats, 3.00. The hourly row of
    team x must carry e-c as its last_event_id; carrying e-a (the smallest) let team y's e-b win the
    cross-row tie (2 seats); comparing the rows by time only picked whichever row came last."""
    partials, quantity, amount = _last_quantity(tmp_path, [("e-a", "x", 1, T), ("e-c", "x", 3, T), ("e-b", "y", 2, T)])
    assert partials.select("dimensions", "quantity", "last_event_id").rows() == [
        ('{"team":"x"}', Decimal(3), "e-c"), ('{"team":"y"}', Decimal(2), "e-b")]
    assert (quantity, amount) == (Decimal(3), 300)


@pytest.mark.parametrize(("events", "expected"), [
    # the larger id in the row that sorts first (team a), then in the row that sorts last (team b)
    ([("e-z", "a", 9, T), ("e-b", "b", 2, T)], 9),
    ([("e-b", "a", 2, T), ("e-z", "b", 9, T)], 9),
    # a later time beats a larger id: team a's e-z at 09:15 loses to team b's e-b at 10:05
    ([("e-z", "a", 9, T), ("e-b", "b", 2, T + dt.timedelta(minutes=50))], 2),
    # ids compare as text: "e-9" > "e-10"
    ([("e-9", "a", 4, T), ("e-10", "b", 7, T)], 4),
])
def test_last_across_dimension_rows_breaks_time_ties_by_event_id(tmp_path, events, expected):
    """One seat count per team, the rows tied on last_event_time: the period's last is the row with the
    larger last_event_id, whichever team (dimension row) it is in, so both orders of the teams are
    tried. Sorting the rows by time alone took whichever tied row the sort left last (team a's, here:
    2 seats instead of team b's 9 in the second case), not the larger event_id's."""
    _, quantity, amount = _last_quantity(tmp_path, events)
    assert (quantity, amount) == (Decimal(expected), expected * 100)


# --- unique_count: an hour without the property counts no null value ---------------------------------------

def test_unique_count_ignores_hours_whose_events_lack_the_property(make_rules):
    """active_users counts distinct `user_id`s. One hour has only an event without user_id (its hourly
    row has no distinct values: NULL), another has u1: 1 user, 1 x 2.00 = 2.00. Counting the null left
    by the empty hour as a value made it 2 users (4.00)."""
    rules = make_rules("""
        - {meter: active_users, model: per_unit, unit_amount: "2.00"}
    """)
    events = [("e1", "active_users", dt.datetime(2026, 10, 5, 3, tzinfo=UTC), None, "{}"),
              ("e2", "active_users", dt.datetime(2026, 10, 5, 4, tzinfo=UTC), None, '{"user_id":"u1"}')]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, OCT1, NOV1)
    assert partials.select("quantity", "distinct_values").rows() == [(Decimal(0), None), (Decimal(1), ["u1"])]
    q = charge_quantities(partials, segments_oct(), rules)
    assert q.select("charge_id", "quantity").rows() == [(0, Decimal(1))]
    assert rate(segments_oct(), q, rules)["amount_minor"].item() == 200


def test_unique_count_ignores_a_null_inside_an_hours_list(make_rules):
    """Hourly rows given directly: distinct values [None] and ["u1"]. The union of values is {u1}:
    1 user. Without dropping nulls, n_unique counted None as a value: 2."""
    rules = make_rules("""
        - {meter: active_users, model: per_unit, unit_amount: "2.00"}
    """)
    hours = [dt.datetime(2026, 10, 5, h, tzinfo=UTC) for h in (3, 4)]
    partials = pl.DataFrame({
        "customer_id": ["c1", "c1"], "meter": ["active_users"] * 2, "dimensions": ["{}", "{}"], "hour": hours,
        "event_date": [dt.date(2026, 10, 5)] * 2, "quantity": [Decimal(0), Decimal(1)], "event_count": [1, 1],
        "last_event_time": hours, "last_event_id": ["e1", "e2"], "distinct_values": [[None], ["u1"]],
    }, schema={"customer_id": pl.String, "meter": pl.String, "dimensions": pl.String, "hour": pl.Datetime("us", "UTC"),
               "event_date": pl.Date, "quantity": pl.Decimal(38, 12), "event_count": pl.Int64,
               "last_event_time": pl.Datetime("us", "UTC"), "last_event_id": pl.String,
               "distinct_values": pl.List(pl.String)})
    q = charge_quantities(partials, segments_oct(), rules)
    assert q.select("charge_id", "quantity").rows() == [(0, Decimal(1))]
