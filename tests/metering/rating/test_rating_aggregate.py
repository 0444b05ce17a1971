"""Hourly aggregates combine exactly over a period (count, sum, max, last, unique_count) and filters route usage."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.rating.aggregate import build_aggregates, charge_quantities, unpriced_usage

UTC = dt.timezone.utc
CHARGES = """
- {meter: api_calls, model: per_unit, unit_amount: "1"}
- {meter: tokens, model: per_unit, unit_amount: "1"}
- {meter: storage_gb, model: per_unit, unit_amount: "1"}
- {meter: seats, model: per_unit, unit_amount: "1"}
- {meter: active_users, model: per_unit, unit_amount: "1"}
"""
METER_IDS = {"api_calls": 0, "tokens": 1, "storage_gb": 2, "seats": 3, "active_users": 4}


def insert(con, events: list[tuple]) -> None:
    if not events:
        return
    con.executemany(
        "INSERT INTO usage_events VALUES (?, 'c1', ?, ?, CAST(? AS DATE), ?, ?, '{}', 1, 1)",
        [(eid, meter, t, t.date(), value, props) for eid, meter, t, value, props in events],
    )


def segments_oct() -> pl.DataFrame:
    return pl.DataFrame([{"customer_id": "c1", "period_start": dt.date(2026, 10, 1), "period_end": dt.date(2026, 11, 1),
                          "segment_start": dt.date(2026, 10, 1), "segment_end": dt.date(2026, 11, 1),
                          "plan": "t", "plan_version": "v1"}])


event_strategy = st.lists(
    st.tuples(
        st.sampled_from(list(METER_IDS)),
        st.integers(0, 30 * 24 * 60 - 1),                 # minute of October
        st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
        st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
        st.sampled_from(["us", "eu"]),
    ),
    min_size=1, max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=event_strategy)
def test_hourly_partials_combine_exactly(make_rules, raw):
    rules = make_rules(CHARGES)
    events = []
    for i, (meter, minute, value, user, region) in enumerate(raw):
        t = dt.datetime(2026, 10, 1, tzinfo=UTC) + dt.timedelta(minutes=minute)
        props = {"api_calls": f'{{"region":"{region}"}}', "tokens": '{"model":"small"}',
                 "active_users": f'{{"user_id":"{user}"}}'}.get(meter, "{}")
        events.append((f"e{i:03d}", meter, t, None if meter in ("api_calls", "active_users") else value, props))
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    got = {r["charge_id"]: r["quantity"] for r in charge_quantities(partials, segments_oct(), rules).iter_rows(named=True)}

    expected: dict[int, Decimal] = {}
    by_meter: dict[str, list] = {}
    for e in events:
        by_meter.setdefault(e[1], []).append(e)
    for meter, evs in by_meter.items():
        if meter == "api_calls":
            q = Decimal(len(evs))
        elif meter == "tokens":
            q = sum((e[3] for e in evs), Decimal(0))
        elif meter == "storage_gb":
            q = max(e[3] for e in evs)
        elif meter == "seats":
            q = max(evs, key=lambda e: (e[2], e[0]))[3]     # latest time, then larger id
        else:
            q = Decimal(len({e[4] for e in evs}))
        expected[METER_IDS[meter]] = q
    assert got == expected


def test_filters_route_dimension_values_to_their_charge(make_rules):
    rules = make_rules("""
        - {name: us, meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: us}}
        - {name: eu, meter: api_calls, model: per_unit, unit_amount: "2", filters: {region: [eu]}}
        - {name: large, meter: tokens, model: per_unit, unit_amount: "3", filters: {model: large}}
    """)
    t = dt.datetime(2026, 10, 5, 3, tzinfo=UTC)
    events = [(f"a{i}", "api_calls", t, None, '{"region":"us"}') for i in range(3)]
    events += [(f"b{i}", "api_calls", t, None, '{"region":"eu"}') for i in range(2)]
    events += [("c0", "tokens", t, Decimal(10), '{"model":"large"}'), ("c1", "tokens", t, Decimal(7), '{"model":"small"}')]
    events += [("d0", "api_calls", t, None, "{}")]   # no region: matches no filtered charge
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    q = charge_quantities(partials, segments_oct(), rules)
    assert q.select("charge_id", "quantity").rows() == [(0, Decimal(3)), (1, Decimal(2)), (2, Decimal(10))]


def test_any_property_name_is_read_literally():
    """Dimension and property names went into a JSONPath (`$.` + name): `user[id]` failed the whole
    aggregation (a BinderException traceback, exit 1, after `rules validate` said ok), and the flat key
    `a.b` was read as a nested `a` object, so its usage got a null dimension (audit)."""
    from metering.rules.model import Meter

    meters = {"api_calls": Meter(name="api_calls", aggregation="count", unit="", value="value", property=None,
                                 dimensions=("a.b", "user[id]")),
              "active_users": Meter(name="active_users", aggregation="unique_count", unit="", value="value",
                                    property="it's/~x", dimensions=())}
    t = dt.datetime(2026, 10, 20, 3, tzinfo=UTC)
    props = '{"a.b":"flat","user[id]":"u1","it\'s/~x":"v1"}'
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, [("e1", "api_calls", t, None, props), ("e2", "active_users", t, None, props),
                     ("e3", "active_users", t, None, props.replace("v1", "v2"))])
        partials = build_aggregates(con, meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    rows = {r["meter"]: r for r in partials.to_dicts()}
    assert rows["api_calls"]["dimensions"] == '{"a.b":"flat","user[id]":"u1"}'
    assert rows["active_users"]["quantity"] == Decimal(2)


def test_usage_outside_the_segment_is_not_counted(make_rules):
    rules = make_rules(CHARGES)
    events = [("e1", "api_calls", dt.datetime(2026, 9, 30, 23, 59, tzinfo=UTC), None, '{"region":"us"}'),
              ("e2", "api_calls", dt.datetime(2026, 10, 1, 0, 0, tzinfo=UTC), None, '{"region":"us"}'),
              ("e3", "api_calls", dt.datetime(2026, 11, 1, 0, 0, tzinfo=UTC), None, '{"region":"us"}')]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 9, 1), dt.date(2026, 12, 1))
    assert partials.height == 3
    q = charge_quantities(partials, segments_oct(), rules)
    assert q.select("charge_id", "quantity").rows() == [(0, Decimal(1))]


def test_unpriced_usage_is_reported_with_a_reason(make_rules):

    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: us}}
    """)
    t = dt.datetime(2026, 10, 20, 3, tzinfo=UTC)
    events = [("a", "api_calls", t, None, '{"region":"us"}'), ("b", "api_calls", t, None, '{"region":"eu"}'),
              ("c", "seats", t, Decimal(2), "{}"),
              ("d", "api_calls", dt.datetime(2026, 10, 2, tzinfo=UTC), None, '{"region":"us"}')]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        con.execute("INSERT INTO usage_events SELECT 'g', 'ghost', meter, event_time, event_date, value, properties, "
                    "extra, file_id, source_line FROM usage_events WHERE event_id = 'a'")
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    # c1's plan starts on Oct 10: the Oct 2 call has no plan in force
    segments = segments_oct().with_columns(segment_start=pl.lit(dt.date(2026, 10, 10)))
    out = unpriced_usage(partials, segments, rules, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    assert out.select("customer_id", "meter", "dimensions", "reason", "events").rows() == [
        ("c1", "api_calls", '{"region":"eu"}', "no_matching_charge", 1),
        ("c1", "api_calls", '{"region":"us"}', "no_plan_in_force", 1),
        ("c1", "seats", "{}", "no_matching_charge", 1),
        ("ghost", "api_calls", '{"region":"us"}', "unknown_customer", 1),
    ]


def test_usage_before_the_subscription_began_is_listed_not_lost(make_rules):
    """c1 subscribes on Oct 10, so its first period starts then: an Oct 2 event lies in no period. It
    once vanished from every list (not billed, rightly, but not reported either). An event at 00:30 on
    the day c1 subscribes is in the period, billed, not listed (`hour <= starts_on` would list it)."""
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: us}}
    """)
    events = [("a", "api_calls", dt.datetime(2026, 10, 2, 5, tzinfo=UTC), None, '{"region":"us"}'),
              ("b", "api_calls", dt.datetime(2026, 10, 10, 0, 30, tzinfo=UTC), None, '{"region":"us"}')]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    segments = segments_oct().with_columns(period_start=pl.lit(dt.date(2026, 10, 10)),
                                           segment_start=pl.lit(dt.date(2026, 10, 10)))
    starts = pl.DataFrame({"customer_id": ["c1"], "starts_on": [dt.date(2026, 10, 10)]})
    out = unpriced_usage(partials, segments, rules, dt.date(2026, 10, 1), dt.date(2026, 11, 1), starts)
    assert out.select("customer_id", "meter", "reason", "events").rows() == [
        ("c1", "api_calls", "no_plan_in_force", 1)]
    assert charge_quantities(partials, segments, rules).select("charge_id", "quantity").rows() == [(0, 1)]


def test_usage_of_a_customer_whose_subscription_begins_in_a_later_month_is_counted_once(make_rules):
    """c1 is listed, subscribing on Nov 10; it sends one event on Oct 2. October has no period of its,
    so no segment: the event was reported twice, as `no_plan_in_force` and as `unknown_customer` ("not
    in the customer list", which it is), and the month's unpriced count was inflated (the audit's
    4,800-event sample: 1,009 reported where 644 were unpriced)."""
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: us}}
    """)
    events = [("a", "api_calls", dt.datetime(2026, 10, 2, 5, tzinfo=UTC), None, '{"region":"us"}')]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    no_segments = segments_oct().clear()
    starts = pl.DataFrame({"customer_id": ["c1"], "starts_on": [dt.date(2026, 11, 10)]})
    out = unpriced_usage(partials, no_segments, rules, dt.date(2026, 10, 1), dt.date(2026, 11, 1), starts)
    assert out.select("customer_id", "meter", "reason", "events").rows() == [
        ("c1", "api_calls", "no_plan_in_force", 1)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=event_strategy, split=st.integers(2, 30))
def test_sub_interval_quantities_sum_to_the_period_total(make_rules, raw, split):
    """I7: splitting a period into segments (a plan change) loses and double-counts nothing: a flow's
    (count, sum) segment quantities add up to the period's; a gauge's (max, last, unique_count) each
    segment holds the period's own quantity, which pricing prorates by day (it once held the
    segment's, so a steady gauge was billed in full by every segment)."""
    rules = make_rules(CHARGES)
    events = []
    for i, (meter, minute, value, user, region) in enumerate(raw):
        props = {"api_calls": f'{{"region":"{region}"}}', "tokens": '{"model":"small"}',
                 "active_users": f'{{"user_id":"{user}"}}'}.get(meter, "{}")
        events.append((f"e{i:03d}", meter, dt.datetime(2026, 10, 1, tzinfo=UTC) + dt.timedelta(minutes=minute),
                       None if meter in ("api_calls", "active_users") else value, props))
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    whole = dict(charge_quantities(partials, segments_oct(), rules).select("charge_id", "quantity").rows())
    cut = dt.date(2026, 10, split)
    halves = pl.concat([segments_oct().with_columns(segment_end=pl.lit(cut)),
                        segments_oct().with_columns(segment_start=pl.lit(cut))])
    parts = charge_quantities(partials, halves, rules)
    flows = {METER_IDS["api_calls"], METER_IDS["tokens"]}
    summed = dict(parts.filter(pl.col("charge_id").is_in(flows)).group_by("charge_id")
                  .agg(pl.col("quantity").sum()).rows())
    assert summed == {c: q for c, q in whole.items() if c in flows}
    gauges = parts.filter(~pl.col("charge_id").is_in(flows))
    assert all(whole[c] == q for c, q in gauges.select("charge_id", "quantity").rows())
    assert dict(gauges.group_by("charge_id").len().rows()) == {c: 2 for c in whole if c not in flows}  # both halves
