"""The Stripe client used by webhook repair (built only when a repair actually runs)."""

from __future__ import annotations

import dagster as dg
import stripe

from metering.webhooks.repair import make_client


class StripeRepairClient(dg.ConfigurableResource):
    """A `stripe.StripeClient` from `STRIPE_API_KEY` / `STRIPE_API_BASE`; `api_base` overrides the base."""

    api_base: str = ""

    def client(self) -> stripe.StripeClient:
        return make_client(api_base=self.api_base or None)
