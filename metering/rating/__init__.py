"""Exact, vectorised rating of usage against the pricing rules.

Data flow (one module per step):

- `aggregate`: usage_events -> usage_aggregates (customer x meter x dimensions x hour), and hourly
  rows -> period quantities per charge (filters, the meter's aggregation over the period);
- `catalog`: the rules as Polars frames (charges, tiers, versions);
- `money`: exact scaled-integer arithmetic and rounding;
- `pricing.rate`: THE rating function (segments + quantities -> rated lines), used by the Dagster
  assets, `metering rerate` and the offline `metering rate` alike;
- `service`: warehouse reads/writes for a monthly partition; `whatif`: the offline what-if;
  `bench`: `metering bench rate`.
"""
