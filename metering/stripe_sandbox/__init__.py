"""A local, stateful stand-in for the part of the Stripe API the engine uses.

Independent on purpose: nothing here imports the rest of ``metering`` (its price arithmetic is
written separately from Stripe's docs, so reconciliation can catch a mistake on either side).

    from metering.stripe_sandbox import SandboxConfig, StripeSandbox
    sandbox = StripeSandbox(SandboxConfig()).start("127.0.0.1", 12111)

Tests use :func:`metering.stripe_sandbox.testing.running_sandbox`.
"""

from __future__ import annotations

from .server import StripeSandbox
from .store import SandboxConfig

__all__ = ["SandboxConfig", "StripeSandbox"]
