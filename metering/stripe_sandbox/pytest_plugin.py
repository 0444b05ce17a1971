"""pytest plugin: ``pytest_plugins = ["metering.stripe_sandbox.pytest_plugin"]`` gives the
``stripe_sandbox`` fixture (a fresh sandbox per test, see ``testing.SandboxHandle``)."""

from __future__ import annotations

from typing import Iterator

import pytest

from .testing import SandboxHandle, running_sandbox


@pytest.fixture
def stripe_sandbox() -> Iterator[SandboxHandle]:
    """A running local Stripe sandbox on a free loopback port, with fast webhook retries."""
    with running_sandbox() as handle:
        yield handle
