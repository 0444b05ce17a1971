"""Stripe webhooks in Dagster: landed files -> stripe_webhook_events -> reconciled Stripe state."""
