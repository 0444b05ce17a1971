"""Plumbing shared by the resource modules: the request object, routing, parameter coercion,
list pagination, expansion and metadata updates, all as Stripe does them."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from .apierrors import StripeAPIError, invalid, missing_param, not_found, not_modelled
from .spec import operation_key
from .store import State


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    idempotency_key: str | None = None

    def event_request(self) -> dict[str, Any]:
        return {"id": self.request_id, "idempotency_key": self.idempotency_key}


Handler = Callable[..., dict[str, Any]]
ROUTES: list[tuple[str, re.Pattern[str], Handler, str]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    """Register a handler for ``METHOD /v1/path/{name}``."""
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

    def register(fn: Handler) -> Handler:
        ROUTES.append((method, regex, fn, pattern))
        return fn

    return register


def _specificity(template: str) -> int:
    """How many path segments a template leaves to parameters: the fewer, the more specific."""
    return template.count("{")


@functools.cache
def _spec_operations(method: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The spec's path templates of `method` (``/v1/customers/{}``) with the pattern each matches,
    compiled once: `resolve` tests them on every request."""
    from .request_schemas import SCHEMAS

    prefix = f"{method} "
    templates = [key[len(prefix):] for key in SCHEMAS if key.startswith(prefix)]
    return tuple((t, re.compile(re.escape(t).replace(r"\{\}", "[^/]+"))) for t in templates)


def resolve(method: str, path: str) -> tuple[Handler, dict[str, str], str] | None:
    """(handler, path parameters, route template) for a request, or None (an unknown URL).

    As at Stripe, a literal segment beats a path parameter: ``/v1/customers/search`` is the search
    operation, not the customer ``search``. An operation of the spec the sandbox has no handler for
    (``request_schemas.SCHEMAS`` lists them all), or one more specific than the route that would
    otherwise answer, is refused with :func:`not_modelled` rather than routed to another one."""
    found = [(fn, match.groupdict(), template) for m, regex, fn, template in ROUTES
             if m == method and (match := regex.match(path))]
    best = min(found, key=lambda f: _specificity(f[2]), default=None)
    spec_match = [template for template, regex in _spec_operations(method) if regex.fullmatch(path)]
    operation = min(spec_match, key=_specificity, default=None)
    if operation is not None and (best is None or _specificity(operation) < _specificity(best[2])):
        raise not_modelled(f"{method} {operation}")
    return best


def check_params(method: str, template: str, params: dict[str, Any]) -> None:
    """Hold a request's parameters to the operation's request schema in Stripe's OpenAPI description
    (``request_schemas.py``, generated from it), for every operation alike, before any handler runs:

    - a top-level parameter the operation does not take: 400 ``parameter_unknown``;
    - a required parameter (at any depth) absent or empty: 400 ``parameter_missing``;
    - an integer that is not ``-?[0-9]+`` on the wire: 400 ``parameter_invalid_integer``;
    - a string outside the field's ``enum``, or longer than its ``maxLength``: 400.

    ``param`` names the field as Stripe does (``cancel[identifier]``, ``items[0][price]``). Checks
    are left to the handlers where the value is not of the schema's kind (a string where an object
    belongs), where the spec marks the field ``x-stripeBypassValidation`` (Stripe does not hold
    callers to its list), and for empty values of optional fields (handlers read them as absent).
    Unknown *nested* keys are ignored. None of these errors is stored under an idempotency key.
    """
    from .request_schemas import SCHEMAS

    schema = SCHEMAS.get(operation_key(method, template))
    if schema is None:
        return
    accepted = schema["properties"]
    for name in params:
        if name not in accepted:
            raise invalid(f"Received unknown parameter: {name}", name, code="parameter_unknown")
    problem = _check(schema, params, "")
    if problem is not None and not problem.mismatch:
        raise problem.error


@dataclass(frozen=True)
class _Problem:
    error: StripeAPIError
    # the value is not of the schema's kind at all: a reason to try another anyOf branch, and
    # otherwise left to the handler, which knows how to coerce or what to say
    mismatch: bool = False


_MISMATCH = _Problem(StripeAPIError(400, "value of another kind"), mismatch=True)
INTEGER = re.compile(r"-?[0-9]+")


def child_param(param: str, name: str | int) -> str:
    """A nested parameter's name as Stripe writes it: `tiers[0]`, `tiers[0][up_to]`; `name` at the top."""
    return f"{param}[{name}]" if param else str(name)


def _one_of(values: list[str]) -> str:
    shown = [v if v else "''" for v in values]
    if len(shown) <= 2:
        return " or ".join(shown)
    return ", ".join(shown[:-1]) + ", or " + shown[-1]


def _abbreviated(text: str) -> str:
    return text if len(text) <= 23 else f"{text[:10]}...{text[-10:]}"


def _check(schema: dict[str, Any], value: Any, param: str) -> _Problem | None:
    """The first problem of ``value`` against a request ``schema`` (None: fine)."""
    branches = schema.get("anyOf")
    if branches:
        problems = []
        for branch in branches:
            problem = _check(branch, value, param)
            if problem is None:
                return None
            problems.append(problem)
        return next((p for p in problems if not p.mismatch), _MISMATCH)
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return _MISMATCH
        for name in schema.get("required", ()):
            if value.get(name) is None or value.get(name) == "":
                return _Problem(missing_param(child_param(param, name)))
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                problem = _check(properties[name], item, child_param(param, name))
                if problem is not None and not problem.mismatch:
                    return problem
        return None
    if kind == "array":
        if not isinstance(value, list):
            return _MISMATCH
        for index, item in enumerate(value):
            problem = _check(schema.get("items", {}), item, child_param(param, index))
            if problem is not None and not problem.mismatch:
                return problem
        return None
    if not isinstance(value, str):
        return _MISMATCH if kind is not None else None
    enum = schema.get("enum")
    if value == "":
        # Stripe's "unset" value: allowed where the spec lists it, else left to the handler
        return None if enum is None or "" in enum else _MISMATCH
    if enum == [""]:
        return _MISMATCH  # the "unset" branch of an anyOf: this value belongs to another branch
    if kind == "integer" and not INTEGER.fullmatch(value):
        return _Problem(invalid(f"Invalid integer: {value}", param, code="parameter_invalid_integer"))
    if kind == "boolean" and value not in ("true", "false"):   # as_bool's rule, for every boolean parameter
        return _Problem(invalid(f"Invalid boolean: {value}", param))
    if enum is not None and value not in enum:
        return _Problem(invalid(f"Invalid {param}: must be one of {_one_of(enum)}", param))
    limit = schema.get("maxLength")
    if limit is not None and len(value) > limit:
        return _Problem(invalid(f"Invalid string: {_abbreviated(value)}; must be at most {limit} characters", param))
    return None


# -- coercion -------------------------------------------------------------------------------------
def require(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise missing_param(name)
    return value


def as_int(value: Any, param: str) -> int:
    """An integer as Stripe reads one off the wire: ASCII digits, optionally a leading minus. (Python's
    ``int()`` would also take ``1_000``, `` 7 ``, ``+7`` and non-ASCII digits.)"""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            pass
    raise invalid(f"Invalid integer: {value}", param, code="parameter_invalid_integer")


def as_bool(value: Any, param: str) -> bool:
    """A boolean as Stripe reads one off the wire: `true` or `false` (the SDKs send these). Stripe
    answers `Invalid boolean: 1` to a 1 (github.com/cartalyst/stripe/issues/218) and `Invalid
    boolean: True` to a True (github.com/stripe/stripe-python/issues/487), which the sandbox took."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise invalid(f"Invalid boolean: {value}", param)


def as_decimal(value: Any, param: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {value}", param) from None
    if not result.is_finite():
        raise invalid(f"Invalid decimal: {value}", param)
    return result


def decimal_string(value: Decimal) -> str:
    """Stripe's decimal-string rendering: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text


def choice(value: Any, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        raise invalid(f"Invalid {param}: must be one of {', '.join(allowed)}", param)
    return value


def as_dict(value: Any, param: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid object for {param}", param)
    return value


def as_list(value: Any, param: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):  # a[0]... with gaps
        return list(value.values())
    if not isinstance(value, list):
        return [value]
    return value


def update_metadata(current: dict[str, str], update: Any) -> dict[str, str]:
    """Merge ``metadata[k]=v``; an empty value deletes a key; ``metadata=`` clears all."""
    if update is None:
        return current
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise invalid("Invalid metadata: must be a hash", "metadata")
    result = dict(current)
    for key, value in update.items():
        if len(key) > 40:
            raise invalid("Metadata keys can be at most 40 characters", f"metadata[{key}]")
        if value == "":
            result.pop(key, None)
        else:
            if len(str(value)) > 500:
                raise invalid("Metadata values can be at most 500 characters", f"metadata[{key}]")
            result[key] = str(value)
    if len(result) > 50:
        raise invalid("Metadata can have at most 50 keys", "metadata")
    return result


def fetch(state: State, kind: str, ident: str, label: str, param: str = "id") -> dict[str, Any]:
    obj = state.get(kind, ident)
    if obj is None:
        raise not_found(label, ident, param)
    return obj


# -- lists ----------------------------------------------------------------------------------------
def paginate(items: list[dict[str, Any]], params: dict[str, Any], url: str,
             rank: Callable[[str], Callable[[str], int] | None] | None = None) -> dict[str, Any]:
    """Stripe's list envelope over already-ordered public objects.

    A cursor is a position, not a member of the page: one that has since left the filter (a draft
    finalized while listing drafts) still marks where the next page starts. ``rank(cursor)`` gives the
    position of each id among all objects of the cursor's kind (None: no such object, 400)."""
    limit = as_int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise invalid("Invalid limit: must be between 1 and 100", "limit")
    after, before = params.get("starting_after"), params.get("ending_before")
    if after and before:
        raise invalid("You may only specify one of these parameters: ending_before, starting_after.", "starting_after")
    ids = [item["id"] for item in items]

    def before_cursor(cursor: str, param: str) -> int:
        """How many items come before the cursor (itself excluded)."""
        if cursor in ids:
            return ids.index(cursor)
        position = rank(cursor) if rank is not None else None
        if position is None:
            raise invalid(f"Invalid {param} id: {cursor}", param, code="resource_missing")
        mark = position(cursor)
        return sum(1 for ident in ids if position(ident) < mark)

    if after:
        start = before_cursor(after, "starting_after") + (after in ids)
        page = items[start : start + limit]
        has_more = start + limit < len(items)
    elif before:
        end = before_cursor(before, "ending_before")
        page = items[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        page = items[:limit]
        has_more = len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def created_filter(params: dict[str, Any], name: str = "created") -> Callable[[int], bool]:
    """``created=ts`` or ``created[gt|gte|lt|lte]=ts``."""
    spec = params.get(name)
    if spec is None or spec == "":
        return lambda _ts: True
    if not isinstance(spec, dict):
        exact = as_int(spec, name)
        return lambda ts: ts == exact
    bounds = {op: as_int(v, f"{name}[{op}]") for op, v in spec.items()}
    unknown = set(bounds) - {"gt", "gte", "lt", "lte"}
    if unknown:
        raise invalid(f"Received unknown parameter: {name}[{sorted(unknown)[0]}]", name)

    def accept(ts: int) -> bool:
        return (
            ("gt" not in bounds or ts > bounds["gt"])
            and ("gte" not in bounds or ts >= bounds["gte"])
            and ("lt" not in bounds or ts < bounds["lt"])
            and ("lte" not in bounds or ts <= bounds["lte"])
        )

    return accept


# -- expansion ------------------------------------------------------------------------------------
def expand(state: State, body: dict[str, Any], paths: Any) -> dict[str, Any]:
    """Replace id strings at the dotted ``expand[]`` paths with the objects they name."""
    for path in as_list(paths, "expand"):
        if not isinstance(path, str) or path.count(".") > 3:
            raise invalid(f"Invalid expand path: {path}", "expand")
        _expand_path(state, body, path.split("."), path, None)
    return body


def _expand_path(state: State, node: Any, parts: list[str], full: str, schema: str | None) -> None:
    """Expand ``parts`` in ``node`` (of component ``schema`` when it names no ``object`` itself).
    Every step must be one of the component's ``x-expandableFields`` (Stripe answers 400 "This
    property cannot be expanded" otherwise, even where the field holds an id)."""
    from .request_schemas import EXPANDABLE

    if isinstance(node, list):
        for item in node:
            _expand_path(state, item, parts, full, schema)
        return
    if not isinstance(node, dict) or not parts:
        return
    key, rest = parts[0], parts[1:]
    if node.get("object") == "list":  # a list object (subscription items): its data are of `schema`
        if key != "data":
            raise invalid(f"This property cannot be expanded ({full}).", "expand")
        _expand_path(state, node["data"], rest, full, schema)
        return
    component = EXPANDABLE.get(node.get("object") or schema or "")
    if component is None or key not in component["fields"]:
        raise invalid(f"This property cannot be expanded ({full}).", "expand")
    if key == "tiers" and not rest and node.get("object") == "price":
        # `tiers` is not in a price by default: Stripe includes it only when expanded
        stored = state.get("price", node["id"])
        if stored is not None and stored.get("_tiers") is not None:
            node["tiers"] = [dict(t) for t in stored["_tiers"]]
        return
    if key not in node:
        raise invalid(f"This property cannot be expanded ({full}).", "expand")
    value = node[key]
    if rest:
        if isinstance(value, str) and state.find(value) is not None:
            # `latest_invoice.customer` expands the invoice, then its customer
            node[key] = value = state.render(state.find(value))
        _expand_path(state, value, rest, full, component["refs"].get(key))
        return
    if isinstance(value, str):
        target = state.find(value)
        if target is None:
            raise invalid(f"This property cannot be expanded ({full}).", "expand")
        node[key] = state.render(target)
    elif isinstance(value, list):
        node[key] = [state.render(state.find(v)) if isinstance(v, str) and state.find(v) else v for v in value]


def public(state: State, obj: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Render a stored object for a response, applying ``expand``."""
    return expand(state, state.render(obj), params.get("expand"))


def _ranking(state: State, objs: list[dict[str, Any]]) -> Callable[[str], Callable[[str], int] | None]:
    """For a cursor id: each id's position in the list order (newest first) of all objects of the
    cursor's kind, or None when there is no such object or it is of another kind than the list's."""

    def rank(cursor: str) -> Callable[[str], int] | None:
        obj = state.find(cursor)
        if obj is None or (objs and obj.get("object") != objs[0].get("object")):
            return None
        order = {o["id"]: i for i, o in enumerate(state.all(obj["object"]))}
        return lambda ident: order.get(ident, -1)

    return rank


def public_list(state: State, objs: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict[str, Any]:
    page = paginate([state.render(o) for o in objs], params, url, _ranking(state, objs))
    paths = [p[5:] if p.startswith("data.") else p for p in as_list(params.get("expand"), "expand")]
    for item in page["data"]:
        expand(state, item, [p for p in paths if p != "total_count"])
    return page


def reject_unmodelled(params: dict[str, Any], names: tuple[str, ...] | list[str],
                      message: str = "The sandbox does not model the parameter {name}; it is refused rather than ignored.",
                      within: str = "") -> None:
    """400 for a documented parameter the sandbox would otherwise accept and silently drop (a list
    filter that would return unfiltered data, an update it would not apply). Empty values are absent.
    ``within`` names the enclosing parameter of nested ones (``items[0]``)."""
    for name in names:
        if params.get(name) not in (None, ""):
            param = child_param(within, name)
            raise invalid(message.format(name=param), param)


def reject_all_but(params: dict[str, Any], modelled: set[str], within: str = "") -> None:
    """:func:`reject_unmodelled` for every parameter but ``modelled`` (and ``expand``): for updates,
    whose every other documented parameter would be dropped."""
    reject_unmodelled(params, [name for name in params if name not in modelled and name != "expand"], within=within)


UNMODELLED_FILTER = "The sandbox does not model the list filter {name}: it is refused rather than ignored, as the list would not be filtered."
