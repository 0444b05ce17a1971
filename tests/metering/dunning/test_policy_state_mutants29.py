"""Gaps found by a hand mutation audit of the dunning policy file and the dunning state (mutants29):
how `dunning.yaml` is validated (currency codes, blank and nested-placeholder templates, negative and
boolean values, unknown keys in a step, a plan override or anywhere in the file and their order, the
`plans` section itself, a suspension listed twice, `.yml` plan files, a file that is not UTF-8) and how
the state is computed (the clock's text, day 0 from several failures or from the reconciled row, Stripe's
own uncollectible stamp, a what-if run's entry into dunning, a previous row without an evaluation time,
skipped and written-off steps in the ledger, unknown amounts, the label of a chased first invoice, the
last plan listed, reading failures and plans from the warehouse).

Each test names, in its docstring, the mutant it was written against (ids of the audit's report)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dunning_helpers import DAY, NO_STRIPE_POLICY, T0, write_rules
from test_policy import VALID, _errors   # the policy tests' small valid policy: r1 day 0, retry 3, write-off 30
from test_state import failures, frame, invoice, one

from metering.dunning.policy import load_policy, validate_dunning
from metering.dunning.state import compute_state, parse_clock, read_failures, read_plans
from metering.errors import BadInputError

# --- the policy file ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # (P02: the currency pattern `[a-z]{3}` -> `[a-z]{2,3}`) ISO 4217 codes are three letters
        ('usd: "1.00"', 'us: "1.00"',
         "default.minimum_amount.us: currency must be a lower-case ISO 4217 code such as usd"),
        # (P24: `minor < 0` -> `minor < -1`) one cent below zero is -1 minor unit: negative all the same
        ('usd: "1.00"', 'usd: "-0.01"', "default.minimum_amount.usd: must not be negative, got '-0.01'"),
        # (P26: the bool check on `day` dropped) YAML reads `true` as a bool, which Python counts as the int 1
        ("day: 3,", "day: true,",
         "default.steps[1].day: required, a whole number of days from 0 to 3650 after the first failure, got True"),
        # (P14: `not text.strip()` -> `not text`) a subject of three spaces is blank
        ('subject: "s {invoice_id}"', 'subject: "   "', "templates.t.subject: required, a non-empty string"),
        # (P18/P19/P20: KeyError / IndexError / AttributeError no longer caught) a placeholder nested in
        # a format spec is only looked up when the text is rendered: each of the three ways that fails
        # is named, where it once crashed validation with a traceback
        ('b {amount}', 'b {amount:{nope}}',
         "templates.t.body: cannot be rendered: 'nope' (every placeholder is text)"),
        ('b {amount}', 'b {amount:{0}}',
         "templates.t.body: cannot be rendered: Replacement index 0 out of range for positional args tuple "
         "(every placeholder is text)"),
        ('b {amount}', 'b {amount:{step.x}}',
         "templates.t.body: cannot be rendered: 'str' object has no attribute 'x' (every placeholder is text)"),
        # (P50: the unknown-key check on a step dropped) `days` is a typo of `day`: both are named
        ("{name: retry, day: 3, action: retry}", "{name: retry, days: 3, action: retry}",
         "default.steps[1].days: unknown field (allowed: action, day, name, template)"),
        # (P31: only write_off checked for "at most once") two suspensions in one schedule
        ("- {name: retry, day: 3, action: retry}",
         "- {name: hold, day: 3, action: suspend}\n    - {name: hold_again, day: 4, action: suspend}",
         "default.steps: at most one suspend step"),
        # (P34: a `plans` that is no mapping not reported) a list instead of a mapping
        ("templates:", "plans: [gold]\ntemplates:", "plans: expected a mapping of plan name to overrides"),
        # (P35: the `default` plan name accepted) `default` is the schedule every plan falls back to
        ("templates:", "plans:\n  default: {minimum_amount: {usd: \"2.00\"}}\ntemplates:",
         "plans.default: plan names are strings and cannot be 'default'"),
        # (P38: an empty override accepted) an override that overrides nothing is a mistake
        ("templates:", "plans:\n  gold: {}\ntemplates:",
         "plans.gold: expected a mapping with steps and/or minimum_amount"),
        # (P39: the unknown-key check on a plan override dropped) `minimum` is not `minimum_amount`
        ("templates:", "plans:\n  gold: {minimum: {usd: \"2.00\"}}\ntemplates:",
         "plans.gold.minimum: unknown field (allowed: minimum_amount, steps)"),
    ],
)
def test_each_further_mistake_is_named_alone_with_its_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """Each edit of the valid policy makes exactly one problem, named by its field (the `days` typo
    also leaves the step without its required `day`, reported after it)."""
    assert old in VALID
    errors = _errors(tmp_path, VALID.replace(old, new, 1))
    if "days: 3" in new:
        assert errors == [expected, "default.steps[1].day: required, a whole number of days from 0 to 3650 "
                                    "after the first failure, got None"]
    else:
        assert errors == [expected]


def test_unknown_keys_are_listed_in_sorted_order_whatever_their_type(tmp_path: Path) -> None:
    """(P09: the unknown keys reported in set order, not sorted by their text.) Six unknown top-level
    keys, one of them the integer 1: reported in the order of their text, "1" < "a" < "b" < "c" < "d" <
    "e", one line each, and an integer key does not crash the sort (sorted without `key=str` it would:
    int < str is a TypeError)."""
    text = VALID + "e: 1\nc: 1\n1: x\na: 1\nd: 1\nb: 1\n"
    allowed = "(allowed: default, plans, templates)"
    assert _errors(tmp_path, text) == [f"{k}: unknown field {allowed}" for k in ("1", "a", "b", "c", "d", "e")]


def test_several_unknown_placeholders_are_each_named_in_order(tmp_path: Path) -> None:
    """(P15: only the first unknown placeholder reported.) `{zz}` then `{aa}` in the body: two lines,
    sorted, {aa} first."""
    allowed = "(allowed: {amount}, {currency}, {customer_id}, {days_overdue}, {first_failed_date}, {invoice_id}, {step})"
    assert _errors(tmp_path, VALID.replace("b {amount}", "b {zz} {aa}")) == [
        f"templates.t.body: unknown placeholder {{aa}} {allowed}",
        f"templates.t.body: unknown placeholder {{zz}} {allowed}",
    ]


def test_a_subject_may_start_with_a_line_break_the_run_strips(tmp_path: Path) -> None:
    """(P16: only the subject's end stripped before looking for a line break.) The run strips both ends
    of the subject, so "\\ns {invoice_id}" is sent as "s {invoice_id}": valid, kept as written."""
    text = VALID.replace('subject: "s {invoice_id}"', 'subject: "\\ns {invoice_id}"')
    assert _errors(tmp_path, text) == []
    assert load_policy(tmp_path / "r").templates["t"].subject == "\ns {invoice_id}"


def test_a_template_already_refused_is_not_rendered_too(tmp_path: Path) -> None:
    """(P17: a template is rendered even after a problem was found in it.) A subject with the unknown
    placeholder {secret} is one problem; rendering it anyway would add a second line for the same
    mistake ("cannot be rendered: 'secret'")."""
    assert _errors(tmp_path, VALID.replace("s {invoice_id}", "s {secret}")) == [
        "templates.t.subject: unknown placeholder {secret} (allowed: {amount}, {currency}, {customer_id}, "
        "{days_overdue}, {first_failed_date}, {invoice_id}, {step})"]


def test_an_unknown_action_with_a_template_is_one_problem(tmp_path: Path) -> None:
    """(P30: "only reminders take a template" said of an action that is no action.) `refund` with a
    template: the action is wrong; whether it may take a template is moot until it is a real action."""
    text = VALID.replace("{name: retry, day: 3, action: retry}", "{name: retry, day: 3, action: refund, template: t}")
    assert _errors(tmp_path, text) == [
        "default.steps[1].action: 'refund' is not one of reminder, retry, suspend, write_off"]


def test_an_unknown_plan_with_a_bad_override_reports_both(tmp_path: Path) -> None:
    """(P37: checking stops at the unknown plan name.) plans/ has only `pro`; the override `enterprise`
    names no plan AND has an empty step list: both problems, in that order, so one fix does not just
    reveal the next."""
    folder = tmp_path / "r"
    (folder / "plans").mkdir(parents=True)
    (folder / "plans" / "pro.yaml").write_text("{}\n")
    assert _errors(tmp_path, VALID + "plans:\n  enterprise:\n    steps: []\n") == [
        "plans.enterprise: no plan named 'enterprise' in plans/ (known: pro)",
        "plans.enterprise.steps: required, a non-empty list of steps",
    ]


def test_a_plan_file_ending_in_yml_is_a_known_plan(tmp_path: Path) -> None:
    """(P12: only `.yaml` plan files counted.) plans/ holds `gold.yml` and a `notes.txt`: an override for
    gold is valid, one for notes names no plan (known: gold only)."""
    folder = tmp_path / "r"
    (folder / "plans").mkdir(parents=True)
    (folder / "plans" / "gold.yml").write_text("{}\n")
    (folder / "plans" / "notes.txt").write_text("not a plan\n")
    gold = 'plans:\n  gold: {minimum_amount: {usd: "5.00"}}\n'
    assert _errors(tmp_path, VALID + gold) == []
    assert load_policy(folder).schedule_for("gold").minimum_minor == {"usd": 500}
    assert _errors(tmp_path, VALID + 'plans:\n  notes: {minimum_amount: {usd: "5.00"}}\n') == [
        "plans.notes: no plan named 'notes' in plans/ (known: gold)"]


def test_a_policy_that_is_not_utf8_is_named_as_such(tmp_path: Path) -> None:
    """(P42: the `(file)` field dropped from the message.) A Latin-1 byte (0xE9, é) in a comment: every
    problem names file and field, here `(file)`, for validate and load alike (exit code 3)."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "dunning.yaml").write_bytes(b"# caf\xe9\n" + VALID.encode())
    path = folder / "dunning.yaml"
    assert validate_dunning(folder) == [f"{path}: (file): not UTF-8 text"]
    with pytest.raises(BadInputError) as info:
        load_policy(folder)
    assert (str(info.value), info.value.exit_code) == (f"{path}: (file): not UTF-8 text", 3)


# --- the clock ------------------------------------------------------------------------------------

def test_a_clock_with_no_utc_date_is_bad_input_not_a_crash() -> None:
    """(S02: OverflowError no longer caught.) 0001-01-01T00:00+01:00 is 0000-12-31T23:00 UTC, a year
    Python's datetime cannot hold: it is refused as a bad --now (exit code 3), not a traceback."""
    with pytest.raises(BadInputError) as info:
        parse_clock("0001-01-01T00:00+01:00")
    assert str(info.value) == "--now: '0001-01-01T00:00+01:00' is not an ISO 8601 time (e.g. 2026-11-15T00:00:00Z)"
    assert info.value.exit_code == 3


def test_a_clock_with_spaces_around_it_is_read() -> None:
    """(S43: the text no longer stripped.) " 2026-11-15T00:00:00Z " (as pasted from a shell) is
    midnight UTC on 2026-11-15; Python's fromisoformat refuses the spaces themselves."""
    assert parse_clock(" 2026-11-15T00:00:00Z ") == datetime(2026, 11, 15, tzinfo=timezone.utc)


def test_a_clock_without_an_offset_is_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """(S42: naive input converted with astimezone, i.e. read in the machine's local zone.) On a machine
    in New York (UTC-5 on 2026-11-15), "2026-11-15T00:00:00" is still midnight UTC, not 05:00 UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_clock("2026-11-15T00:00:00") == datetime(2026, 11, 15, tzinfo=timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()


# --- the state ------------------------------------------------------------------------------------

def test_an_invoice_stripe_marked_uncollectible_is_closed_when_stripe_did_it(rules_dir: Path) -> None:
    """(S35: Stripe's marked_uncollectible_at not used for closed_at.) In dunning since T0 (2026-11-02
    09:30); Stripe marked it uncollectible at T0 + 20 d + 2 h; the run at T0 + 21 d records it
    written off, closed at Stripe's time, not at the run's clock."""
    policy = load_policy(rules_dir)
    prev = compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", T0)))
    stamp = T0 + 20 * DAY + timedelta(hours=2)
    off = frame(invoice(status="uncollectible", marked_uncollectible_at=stamp)).cast(
        {"marked_uncollectible_at": pl.Datetime("us", "UTC")})
    row = one(compute_state(off, policy, T0 + 21 * DAY, failures=failures(("in_1", T0)), previous=prev))
    assert (row["state"], row["reason"], row["closed_at"]) == ("written_off", "uncollectible", stamp)


def test_a_what_if_run_leaves_no_entry_into_dunning_behind(rules_dir: Path) -> None:
    """(S45: a what-if row's entered_at carried over.) A 49.99 usd invoice of c2, failed at T0. A what-if
    run 30 days ahead reads c2 as starter (minimum 1.00): in dunning, entered at T0. Back at the real
    clock (T0 + 1 d) c2 is on scale (minimum 50.00): never chased, so it has no entry time at all."""
    policy = load_policy(rules_dir)
    small = frame(invoice("in_2", customer_id="c2", amount_due=4999, amount_remaining=4999))
    plan = {name: pl.DataFrame({"customer_id": ["c2"], "plan": [name]}) for name in ("starter", "scale")}
    what_if = compute_state(small, policy, T0 + 30 * DAY, plans=plan["starter"], failures=failures(("in_2", T0)))
    assert (one(what_if, "in_2")["state"], one(what_if, "in_2")["entered_at"]) == ("in_dunning", T0)
    real = one(compute_state(small, policy, T0 + DAY, plans=plan["scale"], failures=failures(("in_2", T0)),
                             previous=what_if), "in_2")
    assert (real["state"], real["reason"], real["entered_at"]) == ("not_in_dunning", "below_minimum", None)


def test_day_zero_is_the_earliest_of_several_failures_given(rules_dir: Path) -> None:
    """(S03: the latest failure given per invoice taken as day 0.) compute_state is handed two failures of
    in_1, at T0 + 3 d and at T0 (2026-11-02 09:30), both after finalization (T0 - 1 h): day 0 is T0, so
    at T0 + 7 d the final reminder (day 7) is reached; from T0 + 3 d it would be day 4 (payment_retry)."""
    both = failures(("in_1", T0 + 3 * DAY), ("in_1", T0))
    row = one(compute_state(frame(invoice()), load_policy(rules_dir), T0 + 7 * DAY, failures=both))
    assert (row["first_failed_at"], row["step_name"]) == (T0, "final_reminder")


def test_a_previous_row_without_an_evaluation_time_counts_as_seen(rules_dir: Path) -> None:
    """(S05: a previous row whose evaluated_at is null ignored.) A dunning_state row written before
    evaluated_at existed says in_dunning. By T0 + 2 d, 49.50 of the 50.00 is paid: the 0.50 that remains
    is under the 1.00 minimum, but the invoice was already chased, so it stays in dunning (payment_failed);
    read as never seen, it would drop to not_in_dunning (below_minimum)."""
    policy = load_policy(rules_dir)
    first = compute_state(frame(invoice()), policy, T0 + DAY, failures=failures(("in_1", T0)))
    legacy = first.with_columns(evaluated_at=pl.lit(None, dtype=pl.Datetime("us", "UTC")))
    row = one(compute_state(frame(invoice(amount_paid=4950, amount_remaining=50)), policy, T0 + 2 * DAY,
                            failures=failures(("in_1", T0)), previous=legacy))
    assert (row["state"], row["reason"], row["entered_at"]) == ("in_dunning", "payment_failed", T0)


def test_a_step_skipped_in_the_ledger_counts_as_taken(rules_dir: Path) -> None:
    """(S07: only `done` ledger rows counted as taken.) The ledger shows payment_retry (day 3) skipped
    (Stripe was still retrying on its own); at T0 + 1 d, a clock before that step's day (the clock was
    set back), the invoice is still at payment_retry, next final_reminder: a step taken never goes back,
    whether it was done or skipped."""
    taken = pl.DataFrame({"invoice_id": ["in_1"], "step_name": ["payment_retry"], "action": ["retry"],
                          "status": ["skipped"], "outcome": ["stripe_retrying"]})
    row = one(compute_state(frame(invoice()), load_policy(rules_dir), T0 + DAY, failures=failures(("in_1", T0)),
                            performed=taken))
    assert (row["state"], row["step_name"], row["next_step_name"]) == ("in_dunning", "payment_retry", "final_reminder")


def test_an_invoice_written_off_by_us_stays_at_its_last_step_taken(rules_dir: Path) -> None:
    """(S19: the earliest step in the ledger taken as the step reached.) All five default steps are done,
    the write-off last (outcome uncollectible); Stripe's webhook has not landed (status open) and there
    is no previous row. At T0 + 31 d the invoice is written off by us at step write_off (index 4), not
    at first_reminder."""
    names = ["first_reminder", "payment_retry", "final_reminder", "suspension", "write_off"]
    ledger = pl.DataFrame({"invoice_id": ["in_1"] * 5, "step_name": names,
                           "action": ["reminder", "retry", "reminder", "suspend", "write_off"],
                           "status": ["done"] * 5,
                           "outcome": ["sent", "declined", "sent", "suspended", "uncollectible"]})
    row = one(compute_state(frame(invoice()), load_policy(rules_dir), T0 + 31 * DAY,
                            failures=failures(("in_1", T0)), performed=ledger))
    assert (row["state"], row["reason"], row["step_index"], row["step_name"]) == (
        "written_off", "written_off_by_dunning", 4, "write_off")


def test_without_finalization_or_failure_event_day_zero_is_the_reconciled_rows_event(rules_dir: Path) -> None:
    """(S15: the clock preferred to the reconciled row's event time.) No finalized_at, no failure event:
    day 0 is state_event_created, T0 + 5 h, even though the run is a day later (T0 + 1 d + 5 h). The
    existing test ran at that very event time, where the two cannot be told apart."""
    later = T0 + timedelta(hours=5)
    row = one(compute_state(frame(invoice(finalized_at=None, state_event_created=later)), load_policy(rules_dir),
                            later + DAY))
    assert (row["first_failed_at"], row["entered_at"]) == (later, later)


def test_an_open_invoice_with_no_amount_known_is_under_any_minimum(tmp_path: Path) -> None:
    """(S22: an unknown amount taken as 1 minor unit instead of 0.) The minimum is 0.01 usd (1 minor
    unit). An open failed invoice whose reconciled row has no amounts yet counts as 0, under the
    minimum: not in dunning (below_minimum). As 1 it would not be under 1 and would be chased."""
    text = NO_STRIPE_POLICY.replace('usd: "1.00"', 'usd: "0.01"')
    policy = load_policy(write_rules(tmp_path / "rules", text))
    row = one(compute_state(frame(invoice(amount_due=None, amount_remaining=None)), policy, T0 + DAY,
                            failures=failures(("in_1", T0))))
    assert (row["state"], row["reason"]) == ("not_in_dunning", "below_minimum")


def test_a_chased_first_invoice_stays_labelled_payment_failed(rules_dir: Path) -> None:
    """(S27: the subscription_incomplete label given to an invoice already in dunning.) A subscription's
    first invoice is chased at T0 + 1 d (its subscription was active). On the next run its subscription
    is no longer known (no row): it stays in dunning, as chased invoices do, and its reason stays
    payment_failed, not subscription_incomplete (the label of a first invoice never chased)."""
    policy = load_policy(rules_dir)
    inv = frame(invoice(subscription_id="sub_1", billing_reason="subscription_create"))
    first = compute_state(inv, policy, T0 + DAY, failures=failures(("in_1", T0)),
                          subscriptions=pl.DataFrame({"subscription_id": ["sub_1"], "subscription_status": ["active"]}))
    assert (one(first)["state"], one(first)["reason"]) == ("in_dunning", "payment_failed")
    later = one(compute_state(inv, policy, T0 + 2 * DAY, failures=failures(("in_1", T0)), previous=first))
    assert (later["state"], later["reason"]) == ("in_dunning", "payment_failed")


def test_our_paid_retry_pays_what_remained_when_no_payment_was_known(rules_dir: Path) -> None:
    """(S48: a null amount_paid not taken as 0 when our retry paid.) The reconciled row has no
    amount_paid yet (null) and 50.00 remaining; our payment_retry came back paid: the invoice is
    recovered with 0 + 5000 = 5000 paid and nothing remaining (null + 5000 would be null, and the
    summary would count the recovery as nothing)."""
    ledger = pl.DataFrame({"invoice_id": ["in_1"], "step_name": ["payment_retry"], "action": ["retry"],
                           "status": ["done"], "outcome": ["paid"]})
    row = one(compute_state(frame(invoice(amount_paid=None)), load_policy(rules_dir), T0 + 3 * DAY,
                            failures=failures(("in_1", T0)), performed=ledger))
    assert (row["state"], row["amount_paid"], row["amount_remaining"]) == ("recovered", 5000, 0)


def test_the_last_plan_listed_for_a_customer_selects_the_schedule(rules_dir: Path) -> None:
    """(S09: the first plan listed for a customer kept instead of the last.) c1 is listed twice,
    starter then scale: the later row wins, so at T0 + 10 d the invoice follows scale's schedule
    (second_retry on day 10), not the default's (final_reminder on day 7)."""
    plans = pl.DataFrame({"customer_id": ["c1", "c1"], "plan": ["starter", "scale"]})
    row = one(compute_state(frame(invoice()), load_policy(rules_dir), T0 + 10 * DAY, plans=plans,
                            failures=failures(("in_1", T0))))
    assert (row["policy"], row["plan"], row["step_name"]) == ("scale", "scale", "second_retry")


def test_a_failure_event_without_an_invoice_is_not_a_failure(wh: duckdb.DuckDBPyConnection) -> None:
    """(S38: `object_id IS NOT NULL` dropped.) Two invoice.payment_failed events: one for in_1 at T0,
    one whose object has no id. Only in_1's failure is read (no row with a null invoice_id)."""
    for n, obj in enumerate(["in_1", None]):
        wh.execute(
            "INSERT INTO stripe_webhook_events (event_id, type, created, object_id, object_type, raw,"
            " first_received_at, last_received_at, receipt_count, source)"
            " VALUES (?, 'invoice.payment_failed', ?, ?, 'invoice', '{}', ?, ?, 1, 'webhook')",
            [f"evt_{n}", T0 + n * DAY, obj, T0, T0])
    assert read_failures(wh).rows() == [("in_1", T0)]


def test_day_zero_is_the_earliest_failure_across_attempts_and_events(wh: duckdb.DuckDBPyConnection) -> None:
    """(S39: the latest of the two sources' first failures kept.) in_1's failed attempt is recorded in
    stripe_payment_attempts at T0 + 2 d, its invoice.payment_failed event at T0: the first failure is
    T0 (2026-11-02 09:30), the earlier of the two."""
    wh.execute("INSERT INTO stripe_payment_attempts (invoice_id, attempt_count, outcome, event_id, event_type,"
               " attempted_at) VALUES ('in_1', 1, 'failed', 'evt_a', 'invoice.payment_failed', ?)", [T0 + 2 * DAY])
    wh.execute("INSERT INTO stripe_webhook_events (event_id, type, created, object_id, object_type, raw,"
               " first_received_at, last_received_at, receipt_count, source)"
               " VALUES ('evt_b', 'invoice.payment_failed', ?, 'in_1', 'invoice', '{}', ?, ?, 1, 'webhook')",
               [T0, T0, T0])
    assert read_failures(wh).rows() == [("in_1", T0)]


def test_plans_without_effective_dates_are_read_as_they_are(wh: duckdb.DuckDBPyConnection) -> None:
    """(S41: a customer_plans table without a `plan` column read anyway.) A customer_plans table from
    before plans had effective dates (customer_id, plan) is read as is, one row per assignment; one
    without a plan column has no plans to offer (None), not an SQL error."""
    wh.execute("DROP TABLE IF EXISTS customer_plans")
    wh.execute("CREATE TABLE customer_plans (customer_id VARCHAR, plan VARCHAR)")
    wh.execute("INSERT INTO customer_plans VALUES ('c1', 'scale'), ('c1', 'scale'), ('c2', 'starter')")
    assert sorted(read_plans(wh, T0).rows()) == [("c1", "scale"), ("c2", "starter")]
    wh.execute("DROP TABLE customer_plans")
    wh.execute("CREATE TABLE customer_plans (customer_id VARCHAR, tier VARCHAR)")
    assert read_plans(wh, T0) is None
