"""The Stripe client the reconciliation pulls use (built only when a pull runs)."""

from __future__ import annotations

import dagster as dg
import stripe


class ReconcileStripeClient(dg.ConfigurableResource):
    """A `stripe.StripeClient` from `STRIPE_API_KEY` / `STRIPE_API_BASE`; `api_base` overrides the base
    (the local sandbox in the demo and tests)."""

    api_base: str = ""
    api_key: str = ""

    def client(self) -> stripe.StripeClient:
        from metering.stripe.client import make_client, settings_from_env

        settings = settings_from_env(required=not self.api_key)
        if settings is None or self.api_key:
            from metering.stripe.client import StripeSettings

            settings = StripeSettings(api_key=self.api_key)
        if self.api_base:
            settings = settings.with_base(self.api_base)
        return make_client(settings)
