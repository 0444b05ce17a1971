"""Meter definitions from `rating_rules/meters.yaml`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from metering import config
from metering.errors import BadInputError
from metering.rules.yaml_marks import load_yaml, render_path

AGGREGATIONS = ("count", "sum", "max", "last", "unique_count")
METER_KEYS = ("aggregation", "unit", "value", "property", "dimensions", "description", "display_name")


@dataclass(frozen=True)
class Meter:
    name: str
    aggregation: str
    unit: str = ""
    value: str = "value"                 # which event field carries the quantity (sum/max/last)
    property: str | None = None          # for unique_count: the property whose distinct values count
    dimensions: tuple[str, ...] = field(default_factory=tuple)

    def definition(self) -> dict:
        """What prices usage: aggregation, counted property, dimensions (the unit is a label)."""
        return {"aggregation": self.aggregation, "property": self.property, "dimensions": list(self.dimensions),
                "value": self.value}

    def definition_hash(self) -> str:
        """sha256 of `definition` as canonical JSON: a meter with rated usage must keep it."""
        text = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def is_gauge(self) -> bool:   # a method: the field `property` hides the builtin in this body
        """A level over the period (max, last, distinct count), not a flow: its period quantity is
        not the sum of its parts, so a period split by a plan or version change prices the whole
        period's quantity in each part, prorated by day (see `metering.rating.pricing`)."""
        return self.aggregation in GAUGE_AGGREGATIONS


GAUGE_AGGREGATIONS = ("max", "last", "unique_count")

def check_meters(rules_dir: str | Path | None = None) -> tuple[dict[str, Meter], list[str]]:
    """Read `meters.yaml`, returning the meters that are well formed and every problem found.

    Problems read `file:line: meters.<name>.<field>: what is wrong`.
    """
    meters, errors, _ = check_meters_written(rules_dir)
    return meters, errors


def check_meters_written(rules_dir: str | Path | None = None) -> tuple[dict[str, Meter], list[str], set[str] | None]:
    """`check_meters`, and the names of every meter the file holds, malformed ones too (None when the
    file holds no mapping of meters to read them from)."""
    path = config.rules_dir(rules_dir) / "meters.yaml"
    if not path.exists():
        return {}, [f"{path}: (document): file not found (every rules folder needs meters.yaml)"], None
    try:
        doc, marks = load_yaml(path)
    except BadInputError as exc:
        return {}, [str(exc)], None
    errors: list[str] = []

    def err(where: tuple, msg: str) -> None:
        line = marks.line(where)
        errors.append(f"{path}{f':{line}' if line else ''}: {render_path(where)}: {msg}")

    for where, msg in marks.problems:
        err(where, msg)
    if not isinstance(doc, dict) or not isinstance(doc.get("meters"), dict):
        err(("meters",), "expected a mapping of meter name to definition")
        return {}, errors, None
    meters: dict[str, Meter] = {}
    for name, spec in doc["meters"].items():
        where = ("meters", name)
        if not isinstance(name, str) or not name:
            # YAML reads `12345:` as a number: it failed rating with a TypeError, after validate said ok
            err(where, f"{name!r}: a meter's name is text (quote it: \"{name}\")")
            continue
        if not isinstance(spec, dict):
            err(where, "expected a mapping")
            continue
        bad = False
        for key in spec:
            if key not in METER_KEYS:
                err(where + (key,), f"unknown field (allowed: {', '.join(METER_KEYS)})")
                bad = True
        agg = spec.get("aggregation")
        if agg not in AGGREGATIONS:
            err(where + ("aggregation",), f"{agg!r} is not one of {', '.join(AGGREGATIONS)}")
            bad = True
        if spec.get("value", "value") != "value":
            # the quantity is always the event's `value` (the contract's field): another name was
            # accepted and then ignored, pricing a field the rules did not mean
            err(where + ("value",), f"{spec.get('value')!r}: the quantity is always the event's `value` field "
                                    f"(leave `value` out, or write value: value)")
            bad = True
        if agg == "unique_count" and not spec.get("property"):
            err(where + ("property",), "unique_count needs the property whose values it counts")
            bad = True
        elif "property" in spec and not (isinstance(spec["property"], str) and spec["property"]):
            err(where + ("property",), f"{spec['property']!r}: expected a property name (text)")
            bad = True
        dims = spec.get("dimensions") or []
        if not isinstance(dims, list) or not all(isinstance(d, str) and d for d in dims):
            err(where + ("dimensions",), "expected a list of property names")
            bad = True
        elif len(set(dims)) != len(dims):
            err(where + ("dimensions",), "a dimension is listed twice")
            bad = True
        if bad:
            continue
        meters[name] = Meter(
            name=name,
            aggregation=agg,
            unit=str(spec.get("unit", "")),
            value=str(spec.get("value", "value")),
            property=spec.get("property"),
            dimensions=tuple(sorted(dims)),
        )
    return meters, errors, set(doc["meters"])


def load_meters(rules_dir: str | Path | None = None) -> dict[str, Meter]:
    """Read `meters.yaml`. Raises `BadInputError` naming the file, line and field of every malformed entry."""
    meters, errors = check_meters(rules_dir)
    if errors:
        raise BadInputError("\n".join(errors))
    return meters
