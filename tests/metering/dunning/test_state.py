"""Dunning state as the clock advances, from hand-built stripe_invoices rows (whole frames)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
from dunning_helpers import DAY, T0
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.dunning.policy import DunningPolicy, load_policy
from metering.dunning.state import STATE_RANK, compute_state

US = timedelta(microseconds=1)


def invoice(invoice_id: str = "in_1", **fields: object) -> dict:
    row = {
        "invoice_id": invoice_id, "customer": "cus_1", "customer_id": "c1", "status": "open",
        "currency": "usd", "amount_due": 5000, "amount_paid": 0, "amount_remaining": 5000,
        "attempt_count": 1, "finalized_at": T0 - timedelta(hours=1), "state_event_created": T0,
    }
    row.update(fields)
    return row


def frame(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema_overrides={
        "finalized_at": pl.Datetime("us", "UTC"), "state_event_created": pl.Datetime("us", "UTC"),
        "paid_at": pl.Datetime("us", "UTC"), "next_payment_attempt": pl.Datetime("us", "UTC"),
    })


def failures(*pairs: tuple[str, datetime]) -> pl.DataFrame:
    return pl.DataFrame({"invoice_id": [p[0] for p in pairs], "first_failed_at": [p[1] for p in pairs]},
                        schema={"invoice_id": pl.String, "first_failed_at": pl.Datetime("us", "UTC")})


def one(state: pl.DataFrame, invoice_id: str = "in_1") -> dict:
    rows = state.filter(pl.col("invoice_id") == invoice_id).to_dicts()
    assert len(rows) == 1, state
    return rows[0]


def test_steps_follow_the_schedule_to_the_microsecond(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    inv, fail = frame(invoice()), failures(("in_1", T0))
    expected = [  # (clock, step, next step, next step at) — default schedule 0/3/7/14/30 days
        (T0, "first_reminder", "payment_retry", T0 + 3 * DAY),
        (T0 + 3 * DAY - US, "first_reminder", "payment_retry", T0 + 3 * DAY),
        (T0 + 3 * DAY, "payment_retry", "final_reminder", T0 + 7 * DAY),
        (T0 + 7 * DAY, "final_reminder", "suspension", T0 + 14 * DAY),
        (T0 + 14 * DAY, "suspension", "write_off", T0 + 30 * DAY),
        (T0 + 30 * DAY, "write_off", None, None),
    ]
    previous = None
    for now, step, next_step, next_at in expected:
        previous = compute_state(inv, policy, now, failures=fail, previous=previous)
        row = one(previous)
        assert (row["state"], row["step_name"], row["next_step_name"], row["next_step_at"]) == (
            "in_dunning", step, next_step, next_at), now
        assert row["first_failed_at"] == T0 and row["entered_at"] == T0 and row["closed_at"] is None


def test_before_the_first_failure_time_no_step_is_reached(rules_dir: Path) -> None:
    row = one(compute_state(frame(invoice(finalized_at=None)), load_policy(rules_dir), T0 - US,
                            failures=failures(("in_1", T0))))
    assert (row["state"], row["step_index"], row["next_step_name"], row["next_step_at"]) == (
        "in_dunning", None, "first_reminder", T0)


def test_day_zero_is_the_failure_event_when_plausible_else_finalization(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    finalized = T0 - timedelta(hours=1)
    # the failure event lies between finalization and now: it is day 0
    assert one(compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", T0))))[
        "first_failed_at"] == T0
    # a test-clock invoice: the event carries real time, later than the clock's now -> finalized_at
    real_time = T0 + 40 * DAY
    assert one(compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", real_time))))[
        "first_failed_at"] == finalized
    # no event: finalized_at; nothing at all: the reconciled row's own event time
    assert one(compute_state(frame(invoice()), policy, T0 + DAY))["first_failed_at"] == finalized
    later = T0 + timedelta(hours=5)
    assert one(compute_state(frame(invoice(finalized_at=None, state_event_created=later)), policy, later))[
        "first_failed_at"] == later


def test_paid_invoices_that_never_failed_are_not_listed(rules_dir: Path) -> None:
    paid = invoice("in_ok", status="paid", amount_paid=5000, amount_remaining=0, paid_at=T0)
    state = compute_state(frame(paid, invoice("in_draft", status="draft", attempt_count=0)),
                          load_policy(rules_dir), T0 + DAY)
    assert state.is_empty()


def test_minimum_amount_per_currency(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)   # usd 1.00, jpy 100
    rows = frame(
        invoice("in_usd_99", amount_due=99, amount_remaining=99),
        invoice("in_usd_100", amount_due=100, amount_remaining=100),
        invoice("in_jpy_99", currency="jpy", amount_due=99, amount_remaining=99),
        invoice("in_jpy_100", currency="jpy", amount_due=100, amount_remaining=100),
        invoice("in_eur_1", currency="eur", amount_due=1, amount_remaining=1),   # no minimum for eur
    )
    state = compute_state(rows, policy, T0 + DAY)
    got = dict(zip(state["invoice_id"], state["state"]))
    assert got == {"in_usd_99": "not_in_dunning", "in_usd_100": "in_dunning", "in_jpy_99": "not_in_dunning",
                   "in_jpy_100": "in_dunning", "in_eur_1": "in_dunning"}
    below = one(state, "in_usd_99")
    assert (below["reason"], below["step_index"], below["entered_at"]) == ("below_minimum", None, None)


def test_per_plan_override_selects_schedule_and_minimum(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    plans = pl.DataFrame({"customer_id": ["c_big", "c_small"], "plan": ["scale", "starter"]})
    rows = frame(
        invoice("in_big", customer_id="c_big", amount_due=4999, amount_remaining=4999),
        invoice("in_big2", customer_id="c_big", amount_due=5000, amount_remaining=5000),
        invoice("in_small", customer_id="c_small", amount_due=4999, amount_remaining=4999),
    )
    state = compute_state(rows, policy, T0 + 10 * DAY, plans=plans, failures=failures(
        ("in_big", T0), ("in_big2", T0), ("in_small", T0)))
    assert one(state, "in_big")["state"] == "not_in_dunning"           # scale minimum is 50.00
    big2, small = one(state, "in_big2"), one(state, "in_small")
    assert (big2["policy"], big2["plan"], big2["step_name"]) == ("scale", "scale", "second_retry")
    assert (small["policy"], small["plan"], small["step_name"]) == ("default", "starter", "final_reminder")


def test_a_removed_plan_override_falls_back_to_the_default_schedule(rules_dir: Path) -> None:
    """An invoice entered dunning under the scale override; the override is then removed from the
    policy. It once kept pointing at the vanished schedule, and no step ever came again."""
    import dataclasses

    policy = load_policy(rules_dir)
    plans = pl.DataFrame({"customer_id": ["c_big"], "plan": ["scale"]})
    rows = frame(invoice("in_big", customer_id="c_big"))
    fail = failures(("in_big", T0))
    day10 = compute_state(rows, policy, T0 + 10 * DAY, plans=plans, failures=fail)
    assert (one(day10, "in_big")["policy"], one(day10, "in_big")["step_name"]) == ("scale", "second_retry")
    without = dataclasses.replace(policy, plans={})
    day14 = compute_state(rows, without, T0 + 14 * DAY, plans=plans, failures=fail, previous=day10)
    row = one(day14, "in_big")
    assert (row["state"], row["policy"], row["step_name"], row["next_step_name"]) == (
        "in_dunning", "default", "suspension", "write_off")


def test_paying_ends_dunning_and_freezes_the_step(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    fail = failures(("in_1", T0))
    before = compute_state(frame(invoice()), policy, T0 + 15 * DAY, failures=fail)
    assert one(before)["step_name"] == "suspension"
    paid_at = T0 + 16 * DAY
    paid = frame(invoice(status="paid", amount_paid=5000, amount_remaining=0, paid_at=paid_at))
    after = compute_state(paid, policy, T0 + 40 * DAY, failures=fail, previous=before)
    row = one(after)
    assert (row["state"], row["reason"], row["step_name"], row["closed_at"], row["next_step_name"]) == (
        "recovered", "paid", "suspension", paid_at, None)


def test_state_never_moves_back(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    fail = failures(("in_1", T0))
    at_day_15 = compute_state(frame(invoice()), policy, T0 + 15 * DAY, failures=fail)
    # the clock is set back: the state stays, and so does a step the ledger shows taken...
    taken = pl.DataFrame({"invoice_id": ["in_1"], "step_name": ["suspension"], "action": ["suspend"],
                          "status": ["done"], "outcome": ["suspended"]})
    kept = compute_state(frame(invoice()), policy, T0 + DAY, failures=fail, previous=at_day_15, performed=taken)
    assert (one(kept)["state"], one(kept)["step_name"]) == ("in_dunning", "suspension")
    # ...but a step only recorded under the later clock is not carried over: it is not due at this one
    back = compute_state(frame(invoice()), policy, T0 + DAY, failures=fail, previous=at_day_15)
    assert (one(back)["state"], one(back)["step_name"]) == ("in_dunning", "first_reminder")
    # written off (by Stripe), then a stale reconciled row says open again: still written off
    off = compute_state(frame(invoice(status="uncollectible")), policy, T0 + 31 * DAY, failures=fail, previous=back)
    assert one(off)["state"] == "written_off"
    stale = compute_state(frame(invoice()), policy, T0 + 32 * DAY, failures=fail, previous=off)
    assert (one(stale)["state"], one(stale)["reason"]) == ("written_off", "kept_written_off")
    # a written-off invoice that is paid later is recovered (paid always wins)
    paid = compute_state(frame(invoice(status="paid", amount_paid=5000, amount_remaining=0, paid_at=T0 + 33 * DAY)),
                         policy, T0 + 33 * DAY, failures=fail, previous=stale)
    assert one(paid)["state"] == "recovered"


def test_our_own_write_off_and_paid_retry_count_before_webhooks(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    performed = pl.DataFrame({
        "invoice_id": ["in_1", "in_2"], "step_index": [4, 1], "action": ["write_off", "retry"],
        "status": ["done", "done"], "outcome": ["uncollectible", "paid"],
    })
    state = compute_state(frame(invoice("in_1"), invoice("in_2")), policy, T0 + 31 * DAY,
                          failures=failures(("in_1", T0), ("in_2", T0)), performed=performed)
    one_, two = one(state, "in_1"), one(state, "in_2")
    assert (one_["state"], one_["reason"], one_["invoice_status"]) == ("written_off", "written_off_by_dunning", "open")
    assert (two["state"], two["invoice_status"]) == ("recovered", "open")
    # what was remaining is paid: the finance summary counts a recovered invoice by its amount paid
    # (audit: 17 invoices recovered, the 17th counted as 0.00 until its webhook landed)
    assert (two["amount_paid"], two["amount_remaining"]) == (5000, 0)
    assert (one_["amount_paid"], one_["amount_remaining"]) == (0, 5000)
    from metering.dunning.summary import dunning_summary
    recovered = dunning_summary(state).filter(pl.col("category") == "recovered").to_dicts()
    assert [(r["invoices"], r["amount_minor"]) for r in recovered] == [(1, 5000)]


def test_voided_while_in_dunning(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    prev = compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", T0)))
    row = one(compute_state(frame(invoice(status="void", amount_remaining=0)), policy, T0 + 2 * DAY, previous=prev))
    assert (row["state"], row["reason"], row["closed_at"]) == ("void", "voided", T0 + 2 * DAY)


def test_a_what_if_at_a_later_clock_leaves_no_close_in_the_future(rules_dir: Path) -> None:
    """A run evaluated at a later clock (a what-if) closed a voided invoice then; a run back at today's
    clock kept that future closed_at for good (audit). The close is the one Stripe stamped, when known."""
    policy = load_policy(rules_dir)
    prev = compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", T0)))
    voided = frame(invoice(status="void", amount_remaining=0))
    ahead = one(compute_state(voided, policy, T0 + 120 * DAY, previous=prev))
    assert ahead["closed_at"] == T0 + 120 * DAY
    back = one(compute_state(voided, policy, T0 + 2 * DAY, previous=compute_state(voided, policy, T0 + 120 * DAY,
                                                                                    previous=prev)))
    assert back["closed_at"] == T0 + 2 * DAY
    stamped = frame(invoice(status="void", amount_remaining=0, voided_at=T0 + DAY + timedelta(hours=3)))
    assert one(compute_state(stamped.cast({"voided_at": pl.Datetime("us", "UTC")}), policy, T0 + 2 * DAY,
                             previous=prev))["closed_at"] == T0 + DAY + timedelta(hours=3)


def test_closed_before_the_first_run_counts_as_closed_like_paid_and_uncollectible(rules_dir: Path) -> None:
    """Failed, then paid / marked uncollectible / voided before dunning first ran: the void one was
    `not_in_dunning`, which the finance summary filed under below_minimum although it is 50.00."""
    policy = load_policy(rules_dir)
    inv = frame(
        invoice("in_paid", status="paid", amount_paid=5000, amount_remaining=0),
        invoice("in_unc", status="uncollectible"),
        invoice("in_void", status="void", amount_remaining=0),
        invoice("in_small_void", status="void", amount_due=99, amount_remaining=0),
    )
    fail = failures(*((i, T0) for i in ("in_paid", "in_unc", "in_void", "in_small_void")))
    state = compute_state(inv, policy, T0 + DAY, failures=fail)
    assert state.select("invoice_id", "state", "reason").rows() == [
        ("in_paid", "recovered", "paid"),
        ("in_small_void", "not_in_dunning", "voided"),          # under the 1.00 minimum: never chased
        ("in_unc", "written_off", "uncollectible"),
        ("in_void", "void", "voided"),
    ]


def test_a_new_subscriptions_declined_first_invoice_is_not_chased(rules_dir: Path) -> None:
    """A subscription whose first invoice is unpaid is `incomplete`; Stripe voids that invoice 23 h
    after the subscription's creation and never retries it. Such an invoice was chased like a
    renewal. A first invoice whose subscription did start (sent for payment, say) still is."""
    from metering.dunning.summary import dunning_summary

    policy = load_policy(rules_dir)

    def subs(**status: str) -> pl.DataFrame:
        return pl.DataFrame({"subscription_id": list(status), "subscription_status": list(status.values())})

    def inv(invoice_id: str, sub: str, reason: str, status: str = "open") -> dict:
        return invoice(invoice_id, subscription_id=sub, billing_reason=reason, status=status,
                       amount_remaining=0 if status == "void" else 5000)

    ids = ("in_new", "in_unknown", "in_started", "in_renewal", "in_late")
    fail = failures(*((i, T0) for i in ids))
    six_hours = compute_state(
        frame(inv("in_new", "sub_new", "subscription_create"),
              inv("in_unknown", "sub_unknown", "subscription_create"),   # no subscription row yet
              inv("in_started", "sub_started", "subscription_create"),
              inv("in_renewal", "sub_renewal", "subscription_cycle")),
        policy, T0 + timedelta(hours=6), failures=fail,
        subscriptions=subs(sub_new="incomplete", sub_started="active", sub_renewal="past_due"))
    assert six_hours.select("invoice_id", "state", "reason", "step_name").rows() == [
        ("in_new", "not_in_dunning", "subscription_incomplete", None),
        ("in_renewal", "in_dunning", "payment_failed", "first_reminder"),
        ("in_started", "in_dunning", "payment_failed", "first_reminder"),
        ("in_unknown", "not_in_dunning", "subscription_incomplete", None),
    ]
    assert dunning_summary(six_hours).select("category", "invoices").rows() == [
        ("in_dunning", 2), ("at_risk", 2), ("subscription_incomplete", 2)]

    # a day later Stripe has voided them: filed as voided, never chased, whether or not a run saw
    # the invoice open (in_late is first seen void)
    voided = compute_state(
        frame(inv("in_new", "sub_new", "subscription_create", "void"),
              inv("in_late", "sub_late", "subscription_create", "void")),
        policy, T0 + DAY, failures=fail, previous=six_hours.filter(pl.col("invoice_id") == "in_new"),
        subscriptions=subs(sub_new="incomplete_expired", sub_late="incomplete_expired"))
    assert voided.select("invoice_id", "state", "reason", "entered_at").rows() == [
        ("in_late", "not_in_dunning", "voided", None), ("in_new", "not_in_dunning", "voided", None)]
    assert dunning_summary(voided).select("category", "invoices", "amount_minor").rows() == [("void", 2, 10000)]


def test_an_invoice_missing_from_the_reconciled_table_keeps_its_state(rules_dir: Path) -> None:
    policy = load_policy(rules_dir)
    prev = compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", T0)))
    assert compute_state(frame(invoice("in_other", status="draft", attempt_count=0)), policy, T0 + 2 * DAY,
                         previous=prev).to_dicts() == prev.to_dicts()


STATUS = st.sampled_from(["open", "open", "paid", "uncollectible", "void"])


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(min_value=-2, max_value=50), STATUS), min_size=1, max_size=8))
def test_state_and_step_only_move_forward(steps: list[tuple[int, str]]) -> None:
    """The state never goes back, whatever the clock does; the step goes forward with the clock and
    is never one not due at the run's clock (nothing was performed here, so a step recorded under a
    later clock does not carry over when the clock goes back)."""
    from metering import config

    policy: DunningPolicy = load_policy(config.PROJECT_ROOT / "rating_rules")
    step_day = {st_.name: st_.day for st_ in policy.default.steps}
    previous = None
    last_rank, last_step, last_day, day_zero = -1, -1, None, None
    for day, status in steps:
        paid = status == "paid"
        inv = frame(invoice(status=status, amount_paid=5000 if paid else 0,
                            amount_remaining=0 if paid else 5000, paid_at=T0 + day * DAY if paid else None))
        previous = compute_state(inv, policy, T0 + day * DAY, failures=failures(("in_1", T0)), previous=previous)
        row = one(previous)
        rank, step = STATE_RANK[row["state"]], row["step_index"] if row["step_index"] is not None else -1
        assert rank >= last_rank, (steps, row)
        if last_day is not None and day >= last_day:
            assert step >= last_step, (steps, row)
        if row["step_name"] is not None:
            assert step_day[row["step_name"]] <= day, (steps, row)
        last_rank, last_step, last_day = rank, step, day
        day_zero = day_zero or row["first_failed_at"]
        assert row["first_failed_at"] == day_zero          # day 0 never moves once seen


def test_a_what_if_state_leaves_no_schedule_or_entry_behind(rules_dir: Path) -> None:
    """A what-if `dunning_state` 30 days ahead reads the plan in force then. Its schedule and its entry
    into dunning carried over to the next run at the real clock: the scale schedule stayed on a
    starter customer's invoice, and a 49.99 invoice of a scale customer (under scale's 50.00
    minimum: never chased) was chased because the what-if had read starter's minimum."""
    policy = load_policy(rules_dir)
    plans = {name: pl.DataFrame({"customer_id": ["c1", "c2"], "plan": [name, name]}) for name in ("starter", "scale")}
    rows = frame(invoice("in_1", customer_id="c1"))
    what_if = compute_state(rows, policy, T0 + 30 * DAY, plans=plans["scale"], failures=failures(("in_1", T0)))
    assert one(what_if)["policy"] == "scale"
    real = compute_state(rows, policy, T0 + DAY, plans=plans["starter"], failures=failures(("in_1", T0)),
                         previous=what_if)
    alone = compute_state(rows, policy, T0 + DAY, plans=plans["starter"], failures=failures(("in_1", T0)))
    assert (one(real)["policy"], one(real)["step_name"]) == (one(alone)["policy"], one(alone)["step_name"])
    assert one(real)["policy"] != "scale"

    small = frame(invoice("in_2", customer_id="c2", amount_due=4999, amount_remaining=4999))
    what_if = compute_state(small, policy, T0 + 30 * DAY, plans=plans["starter"], failures=failures(("in_2", T0)))
    assert one(what_if, "in_2")["state"] == "in_dunning"
    real = compute_state(small, policy, T0 + DAY, plans=plans["scale"], failures=failures(("in_2", T0)),
                         previous=what_if)
    assert (one(real, "in_2")["state"], one(real, "in_2")["reason"]) == ("not_in_dunning", "below_minimum")


def test_an_invoice_chased_stays_labelled_payment_failed_when_what_remains_falls_under_the_minimum(
        rules_dir: Path) -> None:
    """50.00 USD failed on day 0 and is chased (50.00 >= the shipped 1.00 minimum). By day 1, 49.50 of it
    is paid: 0.50 remains, under the minimum, but an invoice once chased stays chased (states only move
    forward). Its reason stays `payment_failed`; it was `below_minimum`, the label of an invoice never
    chased, beside the state `in_dunning`."""
    policy = load_policy(rules_dir)
    first = compute_state(frame(invoice("in_1")), policy, T0 + DAY, failures=failures(("in_1", T0)))
    assert (one(first)["state"], one(first)["reason"]) == ("in_dunning", "payment_failed")
    later = compute_state(frame(invoice("in_1", amount_paid=4950, amount_remaining=50)), policy, T0 + 2 * DAY,
                          failures=failures(("in_1", T0)), previous=first)
    assert (one(later)["state"], one(later)["reason"], one(later)["amount_remaining"]) == (
        "in_dunning", "payment_failed", 50)
