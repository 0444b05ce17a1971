"""The dunning policy (`rating_rules/dunning.yaml`): loading and validation.

Every problem is reported as `file: path.to.field: what is wrong` (all of them by
`validate_dunning`, the first one plus a count by `load_policy`, raised as `BadInputError`).
A rules folder without `dunning.yaml` has no dunning: `validate_dunning` finds nothing to report,
`load_policy` says the file is missing.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from metering import config
from metering.dunning.money import minor_digits, parse_major
from metering.errors import BadInputError
from metering.rules.yaml_marks import TAG_MISFITS, SafeLoader, parse_yaml, render_path

POLICY_FILE = "dunning.yaml"
ACTIONS = ("reminder", "retry", "suspend", "write_off")
DEFAULT_SCHEDULE = "default"
TEMPLATE_FIELDS = frozenset(
    {"customer_id", "invoice_id", "amount", "currency", "days_overdue", "first_failed_date", "step"}
)
# used with fullmatch: `$` also matches before a trailing newline, which once let "retry\n" through
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_CURRENCY = re.compile(r"[a-z]{3}")
# every character str.splitlines() breaks on: the email package refuses any of them in a header
LINE_BREAK = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_STEP_KEYS = {"name", "day", "action", "template"}
MAX_DAY = 3650  # ten years; the schedule's days are 32-bit, and a step further out is a typo
_SCHEDULE_KEYS = {"steps", "minimum_amount"}
_TOP_KEYS = {"default", "plans", "templates"}


@dataclass(frozen=True)
class Step:
    """One dunning step: `action` at `day` whole days after the first failed payment."""

    index: int
    name: str
    day: int
    action: str
    template: str | None = None


@dataclass(frozen=True)
class Template:
    subject: str
    body: str


@dataclass(frozen=True)
class Schedule:
    """The steps and minimums that apply to one plan (or to every plan: `default`)."""

    name: str
    steps: tuple[Step, ...]
    minimum_minor: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DunningPolicy:
    path: Path
    default: Schedule
    plans: dict[str, Schedule]
    templates: dict[str, Template]
    content_hash: str

    def schedule_for(self, plan: str | None) -> Schedule:
        return self.plans.get(plan or "", self.default)

    @property
    def schedules(self) -> list[Schedule]:
        return [self.default, *self.plans.values()]

    def steps_frame(self) -> pl.DataFrame:
        """One row per schedule x step: policy, step_index, step_name, action, day, template."""
        rows = [
            {"policy": s.name, "step_index": st.index, "step_name": st.name, "action": st.action,
             "day": st.day, "template": st.template}
            for s in self.schedules for st in s.steps
        ]
        return pl.DataFrame(rows, schema=STEPS_SCHEMA)

    def minimums_frame(self) -> pl.DataFrame:
        """One row per schedule x currency with a minimum: policy, currency, minimum_minor."""
        rows = [
            {"policy": s.name, "currency": cur, "minimum_minor": amount}
            for s in self.schedules for cur, amount in sorted(s.minimum_minor.items())
        ]
        return pl.DataFrame(rows, schema={"policy": pl.String, "currency": pl.String, "minimum_minor": pl.Int64})


STEPS_SCHEMA = {
    "policy": pl.String, "step_index": pl.Int32, "step_name": pl.String, "action": pl.String,
    "day": pl.Int32, "template": pl.String,
}


def policy_path(rules_dir: str | Path | None = None) -> Path:
    return config.rules_dir(rules_dir) / POLICY_FILE


class _Checker:
    """Collects `file: field: problem` messages while building the policy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[str] = []

    def error(self, where: str, what: str) -> None:
        # a key may hold a line break ("usd\n"): escaped, so each problem stays one line
        where = LINE_BREAK.sub(lambda m: repr(m.group())[1:-1], where)
        self.errors.append(f"{self.path}: {where}: {what}")

    def unknown_keys(self, where: str, spec: dict, allowed: set[str]) -> None:
        for key in sorted(set(spec) - allowed, key=str):
            self.error(f"{where}.{key}" if where else str(key),
                       f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _known_plans(rules_dir: Path) -> set[str]:
    """Plan names defined in `plans/` (file stems), when the rating rules have any."""
    folder = rules_dir / "plans"
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml")}


def _parse_template_fields(text: str) -> set[str] | str:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        return str(exc)


def _templates(c: _Checker, raw: Any) -> dict[str, Template]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.error("templates", "expected a mapping of template name to {subject, body}")
        return {}
    out = {}
    for name, spec in raw.items():
        where = f"templates.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            c.error(where, "template names are lower-case letters, digits and underscores")
            continue
        if not isinstance(spec, dict):
            c.error(where, "expected a mapping with subject and body")
            continue
        c.unknown_keys(where, spec, {"subject", "body"})
        ok = True
        for key in ("subject", "body"):
            text = spec.get(key)
            if not isinstance(text, str) or not text.strip():
                c.error(f"{where}.{key}", "required, a non-empty string")
                ok = False
                continue
            fields = _parse_template_fields(text)
            if isinstance(fields, str):
                c.error(f"{where}.{key}", f"malformed placeholder: {fields}")
                ok = False
                continue
            for bad in sorted(f for f in fields if f not in TEMPLATE_FIELDS):
                c.error(f"{where}.{key}", f"unknown placeholder {{{bad}}} "
                        f"(allowed: {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))})")
                ok = False
            if key == "subject" and LINE_BREAK.search(text.strip()):
                # the run strips the subject's ends; a break inside could never be put in the header
                c.error(f"{where}.{key}", f"must be one line (it is the email's Subject header), got {text!r}")
                ok = False
                continue
            if ok:
                # rendered as the run renders it (every field is text), so a format spec such as
                # `{days_overdue:d}` fails here, not halfway through a run
                try:
                    text.format(**{f: "1" for f in TEMPLATE_FIELDS})
                except (ValueError, IndexError, KeyError, AttributeError) as exc:
                    c.error(f"{where}.{key}", f"cannot be rendered: {exc} (every placeholder is text)")
                    ok = False
        if ok:
            out[name] = Template(subject=spec["subject"], body=spec["body"])
    return out


MAX_MINOR = 2**63 - 1


def _minimums(c: _Checker, where: str, raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.error(where, "expected a mapping of currency (e.g. usd) to a decimal string (e.g. \"1.00\")")
        return {}
    out = {}
    for cur, value in raw.items():
        at = f"{where}.{cur}"
        if not isinstance(cur, str) or not _CURRENCY.fullmatch(cur):
            c.error(at, "currency must be a lower-case ISO 4217 code such as usd")
            continue
        if not isinstance(value, str):
            c.error(at, f"write the amount as a quoted decimal string (e.g. \"1.00\"), got {value!r}")
            continue
        try:
            minor = parse_major(value.strip(), cur)
        except ValueError as exc:
            c.error(at, f"{exc} (the currency has {minor_digits(cur)} decimal places)")
            continue
        if minor < 0:
            c.error(at, f"must not be negative, got {value!r}")
            continue
        if minor > MAX_MINOR:   # amounts are 64-bit integers of minor units (a larger one crashed the run)
            c.error(at, f"{value!r} is too large (at most {MAX_MINOR} in minor units)")
            continue
        out[cur] = minor
    return out


def _steps(c: _Checker, where: str, raw: Any, templates: dict[str, Template], raw_templates: Any) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        c.error(where, "required, a non-empty list of steps")
        return ()
    steps: list[Step] = []
    seen: set[str] = set()
    previous_day = None
    template_names = set(raw_templates) if isinstance(raw_templates, dict) else set()
    for i, spec in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(spec, dict):
            c.error(at, "expected a mapping with name, day, action")
            continue
        c.unknown_keys(at, spec, _STEP_KEYS)
        ok = True
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            hint = " (YAML reads yes/no/on/off as booleans: quote the name)" if isinstance(name, bool) else ""
            c.error(f"{at}.name", f"required, lower-case letters, digits and underscores, got {name!r}{hint}")
            ok = False
        elif name in seen:
            c.error(f"{at}.name", f"duplicate step name {name!r} (step names key the actions ledger)")
            ok = False
        else:
            seen.add(name)
        day = spec.get("day")
        if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= MAX_DAY:
            c.error(f"{at}.day", f"required, a whole number of days from 0 to {MAX_DAY} after the first failure, "
                    f"got {day!r}")
            ok = False
        elif previous_day is not None and day < previous_day:
            c.error(f"{at}.day", f"steps must be in order of day: {day} comes after day {previous_day}")
            ok = False
        else:
            previous_day = day
        action = spec.get("action")
        if action not in ACTIONS:
            c.error(f"{at}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
            ok = False
        template = spec.get("template")
        if action == "reminder":
            if not isinstance(template, str):
                c.error(f"{at}.template", "a reminder needs a template (a name under templates)")
                ok = False
            elif template not in template_names:
                c.error(f"{at}.template", f"no template named {template!r} under templates")
                ok = False
        elif template is not None and action in ACTIONS:
            c.error(f"{at}.template", f"only reminders take a template, not {action}")
            ok = False
        if ok:
            steps.append(Step(index=i, name=name, day=day, action=action,
                              template=template if action == "reminder" else None))
    actions = [s.action for s in steps]
    if len(steps) == len(raw):
        for once in ("suspend", "write_off"):
            if actions.count(once) > 1:
                c.error(where, f"at most one {once} step")
        if "write_off" in actions and actions[-1] != "write_off":
            c.error(f"{where}[{actions.index('write_off')}].action",
                    "write_off must be the last step (nothing can follow a write-off)")
    return tuple(steps)


def _build(path: Path, doc: Any, known_plans: set[str]) -> tuple[DunningPolicy | None, list[str]]:
    c = _Checker(path)
    if not isinstance(doc, dict):
        c.error("(top level)", "expected a mapping with default, plans, templates")
        return None, c.errors
    c.unknown_keys("", doc, _TOP_KEYS)
    raw_templates = doc.get("templates")
    templates = _templates(c, raw_templates)
    default_raw = doc.get("default")
    default = None
    if not isinstance(default_raw, dict):
        c.error("default", "required, a mapping with steps (and optionally minimum_amount)")
    else:
        c.unknown_keys("default", default_raw, _SCHEDULE_KEYS)
        default = Schedule(
            name=DEFAULT_SCHEDULE,
            steps=_steps(c, "default.steps", default_raw.get("steps"), templates, raw_templates),
            minimum_minor=_minimums(c, "default.minimum_amount", default_raw.get("minimum_amount")),
        )
    plans: dict[str, Schedule] = {}
    plans_raw = doc.get("plans")
    if plans_raw is not None and not isinstance(plans_raw, dict):
        c.error("plans", "expected a mapping of plan name to overrides")
    for plan, spec in (plans_raw or {}).items() if isinstance(plans_raw, dict) else ():
        at = f"plans.{plan}"
        if not isinstance(plan, str) or plan == DEFAULT_SCHEDULE:
            c.error(at, "plan names are strings and cannot be 'default'")
            continue
        if known_plans and plan not in known_plans:
            c.error(at, f"no plan named {plan!r} in plans/ (known: {', '.join(sorted(known_plans))})")
        if not isinstance(spec, dict) or not spec:
            c.error(at, "expected a mapping with steps and/or minimum_amount")
            continue
        c.unknown_keys(at, spec, _SCHEDULE_KEYS)
        steps = (_steps(c, f"{at}.steps", spec["steps"], templates, raw_templates)
                 if "steps" in spec else (default.steps if default else ()))
        minimums = dict(default.minimum_minor) if default else {}
        minimums.update(_minimums(c, f"{at}.minimum_amount", spec.get("minimum_amount")))
        plans[plan] = Schedule(name=plan, steps=steps, minimum_minor=minimums)
    if c.errors or default is None:
        return None, c.errors
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return DunningPolicy(path=path, default=default, plans=plans, templates=templates, content_hash=digest), []


def _read(path: Path) -> tuple[Any, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
        try:
            doc = yaml.load(text, Loader=SafeLoader)
        except TAG_MISFITS:
            doc = None  # a value that does not fit its explicit tag (`day: !!int abc`): parse_yaml names its line
        # a repeated key (two `final_notice` templates) is a mistake: plain YAML keeps the last silently
        _, marks = parse_yaml(text, str(path))
        return doc, [f"{path}: {render_path(where)}: {what}" for where, what in marks.problems]
    except BadInputError as exc:
        return None, [str(exc)]
    except UnicodeDecodeError:
        return None, [f"{path}: (file): not UTF-8 text"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [f"{path}: {where}: not valid YAML: {problem}"]


def validate_dunning(rules_dir: str | Path | None = None) -> list[str]:
    """Every problem in `<rules_dir>/dunning.yaml`, one `file: field: what` string each ([] = valid or absent)."""
    folder = config.rules_dir(rules_dir)
    path = folder / POLICY_FILE
    if not path.exists():
        return []
    doc, errors = _read(path)
    if errors:
        return errors
    _, errors = _build(path, doc, _known_plans(folder))
    return errors


def load_policy(rules_dir: str | Path | None = None) -> DunningPolicy:
    """The validated policy. Raises `BadInputError` (first problem, and how many more) if it is invalid."""
    folder = config.rules_dir(rules_dir)
    path = folder / POLICY_FILE
    if not path.exists():
        raise BadInputError(f"{path}: (file): not found; dunning needs a policy file")
    doc, errors = _read(path)
    policy = None
    if not errors:
        policy, errors = _build(path, doc, _known_plans(folder))
    if errors:
        more = f" (and {len(errors) - 1} more: run `metering dunning validate`)" if len(errors) > 1 else ""
        raise BadInputError(errors[0] + more)
    assert policy is not None
    return policy
