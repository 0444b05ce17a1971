"""Load and validate plans (`rating_rules/plans/<plan>.yaml`) and their versions.

`check_rules(dir)` reads meters and every plan file and returns the rules that are usable plus a
list of every problem, each as `file:line: path.to.field: what is wrong`. `load_rules(dir)` raises
`BadInputError` listing them all. Other files in the rules folder (e.g. `dunning.yaml`, owned by
the dunning policy) are not read here.

Immutability: pass `rated_hashes` ({(plan, version): content hash} of versions that already
rated lines, from the warehouse's `rules_versions` table) and a version whose content changed
since is an error: published prices are changed by adding a version, never by editing one. The
same holds for the meters that priced those lines (entries `(RATED_METER, meter)`: definition
hash, from `rated_meters`): their aggregation, counted property and dimensions decide quantities.
`rated_until` ({(plan, version): the day after the last past day it priced}) also refuses a new
version starting inside that time, which would cut a rated version's range short (its hash holds
its start, not the end its successor implies).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from metering import config
from metering.errors import BadInputError
from metering.rules.meters import Meter, check_meters_written
from metering.rules.model import (
    CURRENCY_DIGITS,
    MODELS,
    ROUNDING_MODES,
    Charge,
    Plan,
    PlanVersion,
    Rules,
    Tier,
    content_hash,
)
from metering.rules.yaml_marks import Marks, load_yaml, render_path

MAX_DECIMALS = 12
MAX_AMOUNT = 10**12        # major units: keeps prorated 10^-24 amounts far inside 128 bits
MAX_QUANTITY = 10**26      # DECIMAL(38, 12)
_DECIMAL_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

PLAN_KEYS = ("plan", "currency", "versions", "description", "display_name")
VERSION_KEYS = ("version", "effective_from", "effective_to", "rounding", "charges", "description")
# Fields each model uses (besides name/model/description); anything else on a charge is an error.
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "per_unit": ("meter", "unit_amount", "included", "filters"),
    "graduated": ("meter", "tiers", "included", "filters"),
    "volume": ("meter", "tiers", "included", "filters"),
    "package": ("meter", "package_size", "package_amount", "package_round", "included", "filters"),
    "flat": ("amount",),
    "minimum": ("amount",),
}
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "per_unit": ("meter", "unit_amount"),
    "graduated": ("meter", "tiers"),
    "volume": ("meter", "tiers"),
    "package": ("meter", "package_size", "package_amount"),
    "flat": ("amount",),
    "minimum": ("amount",),
}
TIER_KEYS = ("up_to", "unit_amount", "flat_amount")
LOOKUP_KEY_MAX = 200       # Stripe's `lookup_key` (spec: POST /v1/prices, maxLength 200)


def stripe_lookup_key(plan: str, version: str, charge: str) -> str:
    """The `lookup_key` of a charge's Stripe price (metering.stripe.catalog finds prices by it).

    Unambiguous because neither a plan name (`_NAME_RE`) nor a version name may hold ':' (a charge
    name may: it is the key's last part)."""
    return f"metering:{plan}:{version}:{charge}"


class _FileErrors:
    """Collects `file:line: path: message` problems for one YAML file."""

    def __init__(self, file: Path, marks: Marks, sink: list[str]) -> None:
        self.file, self.marks, self.sink = file, marks, sink
        self.count = 0

    def __call__(self, path: tuple, message: str) -> None:
        line = self.marks.line(path)
        self.sink.append(f"{self.file}{f':{line}' if line else ''}: {render_path(path)}: {message}")
        self.count += 1


def _amount(value: Any, path: tuple, err: _FileErrors) -> Decimal | None:
    """A money amount: a quoted, non-negative decimal string with at most 12 decimal places."""
    if isinstance(value, float):
        written = err.marks.raw.get(path, repr(value))
        err(path, f"{written} is a YAML float (inexact); write amounts as quoted decimal strings, e.g. \"{written}\"")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        err(path, f"{value!r} is not a decimal amount; write a quoted decimal string such as \"0.002\"")
        return None
    if isinstance(value, int):
        err(path, f"amounts must be quoted decimal strings: write \"{value}\", not the YAML integer {value}")
        return None
    return _decimal_text(value, path, err, "amount")


def _decimal_text(text: str, path: tuple, err: _FileErrors, what: str) -> Decimal | None:
    if not _DECIMAL_RE.match(text.strip()):
        err(path, f"{text!r} is not a non-negative decimal {what} (digits, optionally a point and decimals)")
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:  # pragma: no cover - the regex already rules this out
        err(path, f"{text!r} is not a decimal {what}")
        return None
    if -value.as_tuple().exponent > MAX_DECIMALS:
        err(path, f"{text!r} has more than {MAX_DECIMALS} decimal places")
        return None
    limit = MAX_AMOUNT if what == "amount" else MAX_QUANTITY
    if value >= limit:
        err(path, f"{text!r} is too large ({'an' if what == 'amount' else 'a'} {what} must be below {limit:,}) "
                  "to rate exactly")
        return None
    return value


def _quantity(value: Any, path: tuple, err: _FileErrors, *, positive: bool = False) -> Decimal | None:
    """A unit count: an integer, or a quoted decimal string (a float is inexact and rejected)."""
    if isinstance(value, float):
        written = err.marks.raw.get(path, repr(value))
        err(path, f"{written} is a YAML float (inexact); write an integer or a quoted decimal string, e.g. \"{written}\"")
        return None
    if isinstance(value, bool):
        err(path, f"{value!r} is not a quantity")
        return None
    if isinstance(value, int):
        if value < 0:
            err(path, f"{value} is negative")
            return None
        if value >= MAX_QUANTITY:
            err(path, f"{value} is too large (a quantity must be below {MAX_QUANTITY:,})")
            return None
        result: Decimal | None = Decimal(value)
    elif isinstance(value, str):
        result = _decimal_text(value, path, err, "quantity")
    else:
        err(path, f"{value!r} is not a quantity (an integer or a quoted decimal string)")
        return None
    if result is not None and positive and result <= 0:
        err(path, "must be greater than zero")
        return None
    return result


def _date(value: Any, path: tuple, err: _FileErrors) -> dt.date | None:
    if isinstance(value, dt.datetime):
        err(path, "expected a date (YYYY-MM-DD, UTC midnight), not a timestamp")
        return None
    if isinstance(value, dt.date):
        return value
    # YYYY-MM-DD only: Python's fromisoformat also takes `20260101` and the week date `2026-W01-1`
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    err(path, f"{value!r} is not a date (YYYY-MM-DD)")
    return None


def _filters(value: Any, meter: Meter | None, path: tuple, err: _FileErrors) -> tuple | None:
    if not isinstance(value, dict) or not value:
        err(path, "expected a mapping of dimension to a value or a list of values")
        return None
    out = []
    ok = True
    for dim, allowed in value.items():
        if meter is not None and dim not in meter.dimensions:
            declared = ", ".join(meter.dimensions) or "none"
            err(path + (dim,), f"meter {meter.name} has no dimension {dim!r} (declared: {declared})")
            ok = False
            continue
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values or not all(isinstance(v, str) and v for v in values):
            err(path + (dim,), "expected a non-empty string or list of strings")
            ok = False
            continue
        if len(set(values)) != len(values):
            err(path + (dim,), "a value is listed twice")
            ok = False
            continue
        out.append((dim, tuple(sorted(values))))
    return tuple(sorted(out)) if ok else None


def _tiers(value: Any, path: tuple, err: _FileErrors) -> tuple[Tier, ...] | None:
    if not isinstance(value, list) or not value:
        err(path, "expected a non-empty list of tiers")
        return None
    tiers: list[Tier] = []
    before = err.count
    for i, spec in enumerate(value):
        here = path + (i,)
        if not isinstance(spec, dict):
            err(here, "expected a mapping with up_to, unit_amount and/or flat_amount")
            continue
        for key in spec:
            if key not in TIER_KEYS:
                err(here + (key,), f"unknown tier field (allowed: {', '.join(TIER_KEYS)})")
        if "up_to" not in spec:
            err(here, "missing up_to (a number, or null for the last, unbounded tier)")
            continue
        if "unit_amount" not in spec and "flat_amount" not in spec:
            err(here, "a tier needs unit_amount, flat_amount or both")
            continue
        up_to = None if spec["up_to"] in (None, "inf") else _quantity(spec["up_to"], here + ("up_to",), err, positive=True)
        unit = _amount(spec["unit_amount"], here + ("unit_amount",), err) if "unit_amount" in spec else Decimal(0)
        flat = _amount(spec["flat_amount"], here + ("flat_amount",), err) if "flat_amount" in spec else Decimal(0)
        if unit is None or flat is None or (spec["up_to"] not in (None, "inf") and up_to is None):
            continue
        tiers.append(Tier(up_to=up_to, unit_amount=unit, flat_amount=flat))
    if err.count > before:
        return None
    for i, tier in enumerate(tiers):
        last = i == len(tiers) - 1
        if tier.up_to is None and not last:
            err(path + (i, "up_to"), "only the last tier may be unbounded (up_to: null)")
            return None
        if last and tier.up_to is not None:
            err(path + (i, "up_to"), f"the last tier must be unbounded (up_to: null), not {tier.up_to}: "
                "usage above it would have no price")
            return None
        if i > 0 and tier.up_to is not None and tiers[i - 1].up_to is not None and tier.up_to <= tiers[i - 1].up_to:
            err(path + (i, "up_to"), f"tiers must ascend: up_to {tier.up_to} is not above the previous tier's "
                f"{tiers[i - 1].up_to}")
            return None
    return tuple(tiers)


def _charge(spec: Any, path: tuple, meters: Mapping[str, Meter], err: _FileErrors) -> Charge | None:
    if not isinstance(spec, dict):
        err(path, "expected a mapping describing a charge")
        return None
    model = spec.get("model")
    if model not in MODELS:
        err(path + ("model",), f"unknown model {model!r} (one of: {', '.join(MODELS)})")
        return None
    before = err.count
    allowed = MODEL_FIELDS[model] + ("name", "model", "description")
    for key in spec:
        if key not in allowed:
            err(path + (key,), f"not a field of a {model} charge (allowed: {', '.join(allowed)})")
    for key in REQUIRED_FIELDS[model]:
        if key not in spec:
            err(path, f"a {model} charge needs {key}")
    if err.count > before:
        return None
    meter = None
    if "meter" in spec:
        meter = meters.get(spec["meter"]) if isinstance(spec["meter"], str) else None
        if meter is None:
            err(path + ("meter",), f"unknown meter {spec['meter']!r} (declared in meters.yaml: {', '.join(sorted(meters)) or 'none'})")
    fields: dict[str, Any] = {}
    if "unit_amount" in spec:
        fields["unit_amount"] = _amount(spec["unit_amount"], path + ("unit_amount",), err)
    if "amount" in spec:
        fields["amount"] = _amount(spec["amount"], path + ("amount",), err)
    if "tiers" in spec:
        fields["tiers"] = _tiers(spec["tiers"], path + ("tiers",), err)
    if "package_size" in spec:
        fields["package_size"] = _quantity(spec["package_size"], path + ("package_size",), err, positive=True)
    if "package_amount" in spec:
        fields["package_amount"] = _amount(spec["package_amount"], path + ("package_amount",), err)
    if "package_round" in spec:
        if spec["package_round"] not in ("up", "down"):
            err(path + ("package_round",), f"{spec['package_round']!r} is not up or down")
        fields["package_round"] = spec["package_round"]
    if "included" in spec:
        fields["included"] = _quantity(spec["included"], path + ("included",), err)
    if "filters" in spec:
        fields["filters"] = _filters(spec["filters"], meter, path + ("filters",), err)
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        err(path + ("name",), "expected a non-empty string")
    if err.count > before:
        return None
    if name is None:
        name = default_charge_name(model, spec.get("meter"), fields.get("filters") or ())
    return Charge(name=name, model=model, meter=spec.get("meter"), **fields)


def default_charge_name(model: str, meter: str | None, filters: tuple) -> str:
    """`tokens[model=large]`, `api_calls`, `flat`, `minimum`: the name a charge gets when none is written."""
    if meter is None:
        return model
    if not filters:
        return meter
    return meter + "[" + ",".join(f"{d}={'|'.join(v)}" for d, v in filters) + "]"


def _filters_overlap(a: tuple, b: tuple) -> bool:
    """Two filter sets select a common dimension combination unless some dimension both restrict is disjoint."""
    da, db = dict(a), dict(b)
    return all(set(da[d]) & set(db[d]) for d in set(da) & set(db))


def _describe(filters: tuple) -> str:
    return ", ".join(f"{d} in {list(v)}" for d, v in filters) or "no filters (all units)"


def _version(spec: Any, path: tuple, plan: str, currency: str, meters: Mapping[str, Meter],
             err: _FileErrors) -> PlanVersion | None:
    if not isinstance(spec, dict):
        err(path, "expected a mapping with version, effective_from and charges")
        return None
    before = err.count
    for key in spec:
        if key not in VERSION_KEYS:
            err(path + (key,), f"unknown field (allowed: {', '.join(VERSION_KEYS)})")
    for key in ("version", "effective_from", "charges"):
        if key not in spec:
            err(path, f"missing {key}")
    if err.count > before:
        return None
    version = spec["version"]
    if not isinstance(version, str) or not version.strip():
        err(path + ("version",), f"{version!r}: write the version as a quoted string, e.g. \"2026-01\"")
    elif ":" in version:
        # version "2026:seats" with charge "eu" and version "2026" with charge "seats:eu" had one key
        err(path + ("version",), f"{version!r}: a version name may not contain ':', which separates the parts "
            f"of its Stripe prices' lookup key ({stripe_lookup_key(plan, '<version>', '<charge>')}): two "
            "versions' charges could get one key, and one price")
    start = _date(spec["effective_from"], path + ("effective_from",), err)
    end = _date(spec["effective_to"], path + ("effective_to",), err) if spec.get("effective_to") is not None else None
    if start and end and end <= start:
        err(path + ("effective_to",), f"{end} is not after effective_from {start}")
    rounding = spec.get("rounding", "half_up")
    if rounding not in ROUNDING_MODES:
        err(path + ("rounding",), f"{rounding!r} is not one of {', '.join(ROUNDING_MODES)}")
    charges_spec = spec["charges"]
    if not isinstance(charges_spec, list) or not charges_spec:
        err(path + ("charges",), "expected a non-empty list of charges")
        return None
    charges: list[Charge | None] = [_charge(c, path + ("charges", i), meters, err) for i, c in enumerate(charges_spec)]
    if err.count > before:
        return None
    good = [c for c in charges if c is not None]
    names: dict[str, int] = {}
    for i, charge in enumerate(good):
        if charge.name in names:
            err(path + ("charges", i, "name"), f"charge name {charge.name!r} is used twice in this version "
                f"(also charges[{names[charge.name]}]); give each its own `name`")
        names.setdefault(charge.name, i)
        if charge.model == "minimum" and any(c.model == "minimum" for c in good[:i]):
            err(path + ("charges", i), "a version may have only one minimum")
        if not charge.is_usage:
            continue
        for j in range(i):
            other = good[j]
            if other.is_usage and other.meter == charge.meter and _filters_overlap(other.filters, charge.filters):
                err(path + ("charges", i), f"prices the same units as charges[{j}] ({other.name}): both charge "
                    f"meter {charge.meter} for {_describe(charge.filters)} vs {_describe(other.filters)}; "
                    "make their filters disjoint")
    for i, charge in enumerate(good):
        key = stripe_lookup_key(plan, version.strip(), charge.name)
        if len(key) > LOOKUP_KEY_MAX:
            room = LOOKUP_KEY_MAX - (len(key) - len(charge.name))
            where = path + ("charges", i) + (("name",) if "name" in charges_spec[i] else ())
            err(where, f"the Stripe lookup key of this charge's price ({key[:40]}...) would be {len(key)} "
                f"characters; Stripe allows {LOOKUP_KEY_MAX}: shorten the charge name to at most {max(room, 0)} "
                "characters (or the plan or version name)")
    if err.count > before:
        return None
    pv = PlanVersion(plan=plan, currency=currency, version=version.strip(), effective_from=start,
                     effective_to=end, rounding=rounding, charges=tuple(good), explicit_end=end)
    return replace(pv, content_hash=content_hash(pv))


def _plan_file(file: Path, meters: Mapping[str, Meter], errors: list[str],
               rated_hashes: Mapping[tuple[str, str], str],
               rated_until: Mapping[tuple[str, str], dt.date]) -> Plan | None:
    try:
        doc, marks = load_yaml(file)
    except BadInputError as exc:
        errors.append(str(exc))
        return None
    err = _FileErrors(file, marks, errors)
    for where, msg in marks.problems:
        err(where, msg)
    if not isinstance(doc, dict):
        err((), "expected a mapping with plan, currency and versions")
        return None
    for key in doc:
        if key not in PLAN_KEYS:
            err((key,), f"unknown field (allowed: {', '.join(PLAN_KEYS)})")
    plan = doc.get("plan")
    if not isinstance(plan, str) or not _NAME_RE.match(plan):
        err(("plan",), f"{plan!r}: expected a plan name (lower case letters, digits, _)")
        plan = None
    elif plan != file.stem:
        err(("plan",), f"plan {plan!r} must match the file name ({file.stem}.yaml)")
    currency = doc.get("currency")
    if not isinstance(currency, str) or currency.lower() not in CURRENCY_DIGITS:
        err(("currency",), f"unknown currency {currency!r} (ISO 4217 code Stripe supports with 0 or 2 "
            f"decimals, e.g. usd, eur, jpy)")
        currency = None
    else:
        currency = currency.lower()
    versions_spec = doc.get("versions")
    if not isinstance(versions_spec, list) or not versions_spec:
        err(("versions",), "expected a non-empty list of versions")
        return None
    if plan is None or currency is None:
        return None
    versions = [_version(v, ("versions", i), plan, currency, meters, err) for i, v in enumerate(versions_spec)]
    if any(v is None for v in versions):
        return None
    # Versions are read in file order; dates must be unique and, with explicit ends, neither overlap
    # nor leave a gap before the next version (I6: every instant resolves to exactly one version).
    # Only the last version may end without a successor: the plan is retired from then on.
    seen_names: dict[str, int] = {}
    seen_dates: dict[dt.date, int] = {}
    for i, v in enumerate(versions):
        if v.version in seen_names:
            err(("versions", i, "version"), f"version {v.version!r} is defined twice (also versions[{seen_names[v.version]}])")
        seen_names.setdefault(v.version, i)
        if v.effective_from in seen_dates:
            err(("versions", i, "effective_from"), f"duplicate effective date {v.effective_from}: versions[{seen_dates[v.effective_from]}] "
                "starts the same day; every instant must resolve to exactly one version")
        seen_dates.setdefault(v.effective_from, i)
    order = sorted(range(len(versions)), key=lambda i: versions[i].effective_from)
    for a, b in zip(order, order[1:]):
        va, vb = versions[a], versions[b]
        if va.effective_from != vb.effective_from and va.explicit_end is not None and va.explicit_end > vb.effective_from:
            err(("versions", a, "effective_to"), f"version {va.version} runs to {va.explicit_end}, overlapping version "
                f"{vb.version} which starts {vb.effective_from}")
        if va.explicit_end is not None and va.explicit_end < vb.effective_from:
            last_day = vb.effective_from - dt.timedelta(days=1)
            err(("versions", a, "effective_to"), f"version {va.version} runs to {va.explicit_end}, leaving a gap before "
                f"version {vb.version} which starts {vb.effective_from}: {va.explicit_end} .. {last_day} "
                f"({(vb.effective_from - va.explicit_end).days} day(s)) would be in no version and go unbilled; "
                + (f"version {va.version} has rated usage and cannot change: add a version starting "
                   f"{va.explicit_end} to cover the gap" if (plan, va.version) in rated_hashes
                   else f"end version {va.version} on {vb.effective_from} (or drop its effective_to)"))
    for gone in sorted(v for p, v in rated_hashes if p == plan and v not in seen_names):
        err(("versions",), f"version {gone} of plan {plan} has already rated usage and is missing from the file: "
            "published versions are immutable; put it back (a version ends where the next one starts)")
    for i, v in enumerate(versions):
        old = rated_hashes.get((v.plan, v.version))
        if old is not None and old != v.content_hash:
            err(("versions", i), f"version {v.version} of plan {v.plan} has already rated usage and its content "
                f"changed (hash {old[:12]} -> {v.content_hash[:12]}): published versions are immutable, add a new "
                "version with a later effective_from instead")
    for i, v in enumerate(versions):
        if (plan, v.version) in rated_hashes:
            continue
        cut = [(until, va) for va in versions if va.effective_from < v.effective_from
               and (until := rated_until.get((plan, va.version))) is not None and until > v.effective_from]
        if cut:
            until, va = max(cut, key=lambda c: c[0])
            err(("versions", i, "effective_from"), f"version {v.version} starts {v.effective_from}, inside the "
                f"time version {va.version} has already rated (through {until - dt.timedelta(days=1)}): published "
                f"versions are immutable, their dates included; start it on {until} or later")
    if err.count:
        return None
    ordered = [versions[i] for i in order]
    final = []
    for i, v in enumerate(ordered):
        implied = ordered[i + 1].effective_from if i + 1 < len(ordered) else None
        end = v.explicit_end if v.explicit_end is not None else implied
        final.append(replace(v, effective_to=end))
    return Plan(name=plan, currency=currency, versions=tuple(final))


def plan_files(rules_dir: Path) -> list[Path]:
    folder = rules_dir / "plans"
    return sorted(list(folder.glob("*.yaml")) + list(folder.glob("*.yml")))


RATED_METER = "(meter)"
"""The `plan` part of a `rated_hashes` key that names a meter (no plan name has parentheses)."""


def check_rules(rules_dir: str | Path | None = None,
                rated_hashes: Mapping[tuple[str, str], str] | None = None,
                rated_until: Mapping[tuple[str, str], dt.date] | None = None) -> tuple[Rules, list[str]]:
    """Read meters and plans, returning the usable rules and every problem found (empty = valid)."""
    root = config.rules_dir(rules_dir)
    if not root.is_dir():
        return Rules(meters={}), [f"{root}: (document): rules folder not found"]
    meters, errors, written = check_meters_written(root)
    rated_meters = {m: h for (p, m), h in (rated_hashes or {}).items() if p == RATED_METER}
    rated_hashes = {k: h for k, h in (rated_hashes or {}).items() if k[0] != RATED_METER}
    errors += _changed_meters(root / "meters.yaml", meters, rated_meters, written)
    plans: dict[str, Plan] = {}
    files = plan_files(root)
    if not files:
        errors.append(f"{root / 'plans'}: (document): no plan files (plans/<plan>.yaml)")
    for file in files:
        plan = _plan_file(file, meters, errors, rated_hashes or {}, rated_until or {})
        if plan is not None:
            if plan.name in plans:
                errors.append(f"{file}: plan: plan {plan.name!r} is defined in two files")
            plans[plan.name] = plan
    named = {file.stem for file in files}
    for gone in sorted({p for p, _ in (rated_hashes or {})} - named):
        errors.append(f"{root / 'plans' / (gone + '.yaml')}: (document): plan {gone} has already rated usage and "
                      "its file is missing: published versions are immutable; put the file back")
    return Rules(meters=meters, plans=plans), errors


def _changed_meters(path: Path, meters: Mapping[str, Meter], rated: Mapping[str, str],
                    written: set[str] | None) -> list[str]:
    """A meter that priced rated lines must stay as it was (present, same definition). One the file
    holds but `check_meters` refused, or a file it could not read (`written` None), has its problem
    named already: it is not "missing" too."""
    errors = []
    for name, old in sorted(rated.items()):
        meter = meters.get(name)
        if meter is None and written is not None and name not in written:
            errors.append(f"{path}: meters.{name}: has already priced rated usage and is missing: published "
                          f"meters are immutable; put it back")
        elif meter is not None and meter.definition_hash() != old:
            errors.append(f"{path}: meters.{name}: has already priced rated usage and its aggregation, property, "
                          f"dimensions or value changed (hash {old[:12]} -> {meter.definition_hash()[:12]}): "
                          f"published meters are immutable, add a new meter (and a plan version that uses it)")
    return errors


def load_rules(rules_dir: str | Path | None = None,
               rated_hashes: Mapping[tuple[str, str], str] | None = None) -> Rules:
    """The validated rules; raises `BadInputError` listing every problem (one per line)."""
    rules, errors = check_rules(rules_dir, rated_hashes)
    if errors:
        raise BadInputError(f"{len(errors)} problem(s) in the pricing rules:\n" + "\n".join(errors))
    return rules
