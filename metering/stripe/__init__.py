"""Stripe integration: the client, the catalog sync (meters, prices, customers, subscriptions) and
the usage push with its outbox ledger. A plain library: no Dagster imports.

Modules:
- `client`: `StripeSettings` (from env) and the configured `stripe.StripeClient`.
- `keys`: deterministic meter-event identifiers and Idempotency-Keys.
- `retry`: client-side rate limiter, backoff with jitter, one call with retries and an outcome.
- `ledger`: the outbox ledger table (`stripe_push_ledger`) and its state machine.
- `windows`: the value each customer x meter x window should carry in Stripe.
- `catalog`: meters, products/prices, customers and subscriptions; drift report.
- `push`: plans revisions, guards (24 h / 35 days / finalized invoices), sends, reports.
"""
