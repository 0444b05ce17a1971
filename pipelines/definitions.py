"""The Dagster code location: merges each domain's definitions and adds the shared resources.

Each domain lives in `pipelines/defs/<domain>/definitions.py` and exposes `defs`. The domains are
listed explicitly (not discovered), and a listed domain that cannot be imported fails the load:
a typo in DOMAINS names the missing module instead of silently dropping the domain, and an
import error inside a domain propagates as it is.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence

import dagster as dg

from pipelines.resources import default_resources

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

DOMAINS = ("ingest", "rating", "stripe_push", "webhooks", "reconciliation", "schedules", "publish")


def _domain_defs(domains: Sequence[str] = DOMAINS, package: str = "pipelines.defs") -> list[dg.Definitions]:
    """Each domain's `defs`, importing `<package>.<domain>.definitions`; raises on any that is missing."""
    found = []
    for domain in domains:
        name = f"{package}.{domain}.definitions"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name in (name, f"{package}.{domain}"):
                raise ModuleNotFoundError(f"DOMAINS lists {domain!r}, but there is no module {name}",
                                          name=exc.name) from exc
            raise
        defs = getattr(module, "defs", None)
        if not isinstance(defs, dg.Definitions):
            raise TypeError(f"{name} must define `defs = dg.Definitions(...)`, found {type(defs).__name__}")
        found.append(defs)
    return found


defs = dg.Definitions.merge(
    *_domain_defs(),
    dg.Definitions(resources=default_resources()),
)
