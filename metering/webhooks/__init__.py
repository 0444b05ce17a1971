"""Stripe webhooks: a hardened receiver that lands raw deliveries durably, the landing of those
files into `stripe_webhook_events`, the reconciled current state of invoices / subscriptions /
payment attempts, and repair from Stripe's event list.

Modules, one job each:

- `signature`: verify a `Stripe-Signature` header over the exact raw bytes (pure, no I/O).
- `inbox`: append a verified delivery to a per-process landing file and fsync it.
- `receiver`: the Starlette ASGI app (verify -> land -> 2xx).
- `landing`: read landed files from stored offsets (tolerating a torn last record).
- `events`: fold receipts into `stripe_webhook_events` (one row per Stripe event id).
- `state`: derive `stripe_invoices`, `stripe_invoice_lines`, `stripe_subscriptions`,
  `stripe_payment_attempts` from events, independent of delivery order.
- `repair`: list `/v1/events` through the stripe SDK and re-fetch objects to fill gaps.
"""
