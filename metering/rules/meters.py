"""Meter definitions from `rating_rules/meters.yaml`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metering import config
from metering.errors import BadInputError

AGGREGATIONS = ("count", "sum", "max", "last", "unique_count")


@dataclass(frozen=True)
class Meter:
    name: str
    aggregation: str
    unit: str = ""
    value: str = "value"                 # which event field carries the quantity (sum/max/last)
    property: str | None = None          # for unique_count: the property whose distinct values count
    dimensions: tuple[str, ...] = field(default_factory=tuple)


def load_meters(rules_dir: str | Path | None = None) -> dict[str, Meter]:
    """Read `meters.yaml`. Raises `BadInputError` naming the file and field on a malformed entry."""
    path = config.rules_dir(rules_dir) / "meters.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found (every rules folder needs meters.yaml)") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("meters"), dict):
        raise BadInputError(f"{path}: meters: expected a mapping of meter name to definition")
    meters = {}
    for name, spec in doc["meters"].items():
        where = f"{path}: meters.{name}"
        if not isinstance(spec, dict):
            raise BadInputError(f"{where}: expected a mapping")
        agg = spec.get("aggregation")
        if agg not in AGGREGATIONS:
            raise BadInputError(f"{where}.aggregation: {agg!r} is not one of {', '.join(AGGREGATIONS)}")
        if agg == "unique_count" and not spec.get("property"):
            raise BadInputError(f"{where}.property: unique_count needs the property whose values it counts")
        meters[name] = Meter(
            name=name,
            aggregation=agg,
            unit=str(spec.get("unit", "")),
            value=str(spec.get("value", "value")),
            property=spec.get("property"),
            dimensions=tuple(spec.get("dimensions") or ()),
        )
    return meters
