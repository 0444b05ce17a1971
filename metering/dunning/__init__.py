"""Dunning: chase failed invoice payments by the policy in `rating_rules/dunning.yaml`.

- `policy`: load and validate the policy (`validate_dunning`, `load_policy`).
- `state`: the dunning state of every failed invoice, as whole frames, from `stripe_invoices`.
- `actions`: the exactly-once actions ledger (reminders, payment retries, suspension, write-off).
- `outbox`, `suspensions`: what the actions produce for people and for the product.
- `summary`: the finance view (by step, amount at risk, recovered, written off, per currency).
- `run`: one dunning run (state, actions, state again, publish), used by the CLI and Dagster.
"""
