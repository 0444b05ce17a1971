"""Pricing rules kept in git (`rating_rules/`): meters, plans and their versions, dunning policy.

`load_rules(dir)` gives validated `Rules` (meters + plans); `load_meters(dir)` the meters only;
`check_rules(dir)` returns every problem instead of raising.
"""

from metering.rules.meters import Meter, load_meters
from metering.rules.model import Charge, Plan, PlanVersion, Rules, Tier, minor_digits
from metering.rules.plans import check_rules, load_rules

__all__ = ["Charge", "Meter", "Plan", "PlanVersion", "Rules", "Tier", "check_rules", "load_meters", "load_rules",
           "minor_digits"]
