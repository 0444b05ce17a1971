"""Pricing rules kept in git (`rating_rules/`): meters, plans and their versions, dunning policy."""
