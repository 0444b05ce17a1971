"""The sandbox's own tier arithmetic against a unit-by-unit brute force (hypothesis), and Stripe's
form encoding."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.stripe_sandbox.forms import parse_form
from metering.stripe_sandbox.tiers import amount_minor, unrounded_amount

amounts = st.decimals(min_value=0, max_value=10_000, places=3, allow_nan=False, allow_infinity=False)


@st.composite
def tiered_prices(draw):
    bounds = sorted(set(draw(st.lists(st.integers(1, 60), min_size=0, max_size=4))))
    tiers = []
    for up_to in bounds + [None]:
        tiers.append(
            {"up_to": up_to, "unit_amount_decimal": str(draw(amounts)), "flat_amount_decimal": str(draw(st.integers(0, 5000)))}
        )
    return tiers


def _tier_of(tiers, unit: int) -> int:
    return next(i for i, t in enumerate(tiers) if t["up_to"] is None or unit <= t["up_to"])


@settings(max_examples=150, deadline=None)
@given(tiered_prices(), st.integers(0, 120))
def test_graduated_equals_pricing_each_unit_in_its_own_tier(tiers, quantity):
    price = {"billing_scheme": "tiered", "tiers_mode": "graduated", "tiers": tiers}
    brute = sum((Decimal(tiers[_tier_of(tiers, u)]["unit_amount_decimal"]) for u in range(1, quantity + 1)), Decimal(0))
    reached = _tier_of(tiers, max(quantity, 1)) if quantity else 0
    brute += sum(Decimal(t["flat_amount_decimal"]) for t in tiers[: reached + 1])
    assert unrounded_amount(price, Decimal(quantity)) == brute


@settings(max_examples=150, deadline=None)
@given(tiered_prices(), st.integers(0, 120))
def test_volume_prices_every_unit_at_the_containing_tier(tiers, quantity):
    price = {"billing_scheme": "tiered", "tiers_mode": "volume", "tiers": tiers}
    tier = tiers[_tier_of(tiers, quantity)] if quantity else tiers[0]
    expected = quantity * Decimal(tier["unit_amount_decimal"]) + Decimal(tier["flat_amount_decimal"])
    assert unrounded_amount(price, Decimal(quantity)) == expected


@settings(max_examples=100, deadline=None)
@given(amounts, st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False))
def test_per_unit_rounds_half_up_to_whole_minor_units(unit, quantity):
    exact = quantity * unit
    cents = amount_minor({"billing_scheme": "per_unit", "unit_amount_decimal": str(unit)}, quantity)
    assert abs(Decimal(cents) - exact) <= Decimal("0.5")
    if exact - int(exact) == Decimal("0.5"):
        assert cents == int(exact) + 1


def test_transform_quantity_divides_then_rounds():
    price = {"billing_scheme": "per_unit", "unit_amount_decimal": "100", "transform_quantity": {"divide_by": 1000, "round": "up"}}
    assert amount_minor(price, Decimal(1001)) == 200
    price["transform_quantity"]["round"] = "down"
    assert amount_minor(price, Decimal(1999)) == 100


def test_nested_brackets_lists_and_maps():
    parsed = parse_form(
        "items[0][price]=p1&items[1][price]=p2&items[1][metadata][k]=v&expand[]=a&expand[]=b"
        "&metadata[0]=zero&payload[1]=x&tiers[0][up_to]=inf&created[gte]=5&empty="
    )
    assert parsed == {
        "items": [{"price": "p1"}, {"price": "p2", "metadata": {"k": "v"}}],
        "expand": ["a", "b"],
        "metadata": {"0": "zero"},
        "payload": {"1": "x"},
        "tiers": [{"up_to": "inf"}],
        "created": {"gte": "5"},
        "empty": "",
    }
    assert parse_form("expand[0]=x&expand[1]=y") == {"expand": ["x", "y"]}
    assert parse_form("a%5Bb%5D=1") == {"a": {"b": "1"}}


def test_the_sandbox_imports_nothing_from_the_engine():
    """Independence: its arithmetic must not be the engine's, or reconciliation could not catch a bug."""
    import ast
    from pathlib import Path

    import metering.stripe_sandbox as package

    offenders = []
    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("metering") and not n.startswith("metering.stripe_sandbox")]
    assert offenders == []


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4 * 86400 - 1), st.integers(0, 1000)), max_size=40),
    st.sampled_from([None, "hour", "day"]),
    st.sampled_from(["sum", "count"]),
)
def test_grouped_summaries_add_up_to_the_whole_range(events, window, formula):
    """For sum/count meters the hour and day summaries partition the range's total, raw or
    pre-aggregated, whatever the order the events arrive in."""
    from metering.stripe_sandbox import meters_api
    from metering.stripe_sandbox.api import Request
    from metering.stripe_sandbox.store import SandboxConfig, State

    t0 = 1790812800
    state = State(SandboxConfig(now=t0 + 5 * 86400))
    state.add({"id": "cus_a", "object": "customer", "test_clock": None})
    meter = meters_api.create_meter(
        state,
        Request("POST", "/v1/billing/meters", {
            "display_name": "m", "event_name": "m", "default_aggregation": {"formula": formula},
            **({"event_time_window": window} if window else {})}),
    )
    for i, (offset, value) in enumerate(events):
        meters_api.create_meter_event(state, Request("POST", "/v1/billing/meter_events", {
            "event_name": "m", "identifier": f"e{i}", "timestamp": str(t0 + offset),
            "payload": {"stripe_customer_id": "cus_a", "value": str(value)}}))

    def values(grouping):
        params = {"customer": "cus_a", "start_time": str(t0), "end_time": str(t0 + 4 * 86400), "limit": "100"}
        if grouping:
            params["value_grouping_window"] = grouping
        page = meters_api.list_event_summaries(state, Request("GET", "", params), meter["id"])
        return [Decimal(str(s["aggregated_value"])) for s in page["data"]]

    total = values(None)[0]
    assert sum(values("day"), Decimal(0)) == total
    if window != "day":
        assert sum(values("hour"), Decimal(0)) == total
