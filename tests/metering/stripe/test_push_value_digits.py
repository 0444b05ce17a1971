"""Stripe refuses a meter event value of more than 15 significant digits (400
`meter_event_value_too_many_digits`, API 2026-04-22.dahlia on; the spec we speak is 2026-08-26.dahlia).
A window's value (up to 26 integer digits and 12 decimals) is rounded half-even to 15 digits before
it is planned, so the ledger holds what Stripe holds; before, such a window failed on every push and
its usage never reached Stripe."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from metering.stripe.windows import STRIPE_VALUE_DIGITS, stripe_value
from metering.stripe_sandbox.testing import running_sandbox
from push_world import World, day_start

D1 = dt.date(2026, 11, 17)


@pytest.mark.parametrize(("value", "sent"), [
    ("1500.123456789013", "1500.12345678901"),           # 16 digits: the 16th (3) rounds down
    ("1500.123456789015", "1500.12345678902"),           # a tie: to the even 15th digit
    ("1500.123456789025", "1500.12345678902"),
    ("999.123456789012", "999.123456789012"),             # 15 digits: as it is
    ("123456.123456789012", "123456.123456789"),
    ("999999999999999.5", "1000000000000000"),
    ("12345678901234567890", "12345678901234600000"),
    ("0.000000000001", "0.000000000001"),
    ("-1500.123456789013", "-1500.12345678901"),
    ("0", "0"),
])
def test_a_value_is_rounded_to_fifteen_significant_digits(value: str, sent: str) -> None:
    assert format(stripe_value(Decimal(value)).normalize(), "f") == sent


@given(st.decimals(min_value=Decimal("-1e26"), max_value=Decimal("1e26"), places=12, allow_nan=False,
                   allow_infinity=False))
def test_the_rounding_keeps_fifteen_digits_and_moves_the_value_by_half_a_unit_of_the_fifteenth(value: Decimal) -> None:
    rounded = stripe_value(value)
    assert len(rounded.normalize().as_tuple().digits) <= STRIPE_VALUE_DIGITS
    if value:
        unit = Decimal(1).scaleb(value.adjusted() - STRIPE_VALUE_DIGITS + 1)
        assert abs(rounded - value) <= unit / 2
        assert rounded == value.quantize(unit, rounding=ROUND_HALF_EVEN) or rounded == value


def test_stripe_refuses_a_sixteen_digit_value_and_takes_fifteen() -> None:
    with running_sandbox() as sb:
        client = sb.client()
        meter = client.v1.billing.meters.create({
            "display_name": "Tokens", "event_name": "tokens", "default_aggregation": {"formula": "sum"}})
        customer = client.v1.customers.create({"name": "Acme"})
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.billing.meter_events.create({"event_name": meter.event_name, "payload": {
                "stripe_customer_id": customer.id, "value": "1500.123456789013"}})
        assert refused.value.http_status == 400 and refused.value.code == "meter_event_value_too_many_digits"
        assert "at most 15 digits" in str(refused.value)
        # trailing zeros are not significant; an integer's own zeros neither
        for value in ("1500.12345678901", "1500.123456789010", "12345678901234600000"):
            client.v1.billing.meter_events.create({"event_name": meter.event_name, "payload": {
                "stripe_customer_id": customer.id, "value": value}})


def test_a_sixteen_digit_window_is_pushed_rounded_and_the_ledger_holds_what_stripe_holds(world: World) -> None:
    world.add_events([("acme", "tokens", day_start(D1) + dt.timedelta(hours=5), "1000.5", {"model": "small"}),
                      ("acme", "tokens", day_start(D1) + dt.timedelta(hours=6), "499.623456789013", {"model": "large"})])
    report = world.pusher().push(D1, D1)
    assert (report.acknowledged, report.failed, report.unknown) == (1, 0, 0)
    assert world.ledger().select("meter", "value", "status").rows() == [
        ("tokens", Decimal("1500.12345678901"), "acknowledged")]
    assert world.stripe_total("acme", "tokens", day_start(D1), day_start(D1) + dt.timedelta(days=1)) == Decimal(
        "1500.12345678901")
    again = world.pusher().push(D1, D1)
    assert (again.calls, again.new_revisions) == (0, 0)
