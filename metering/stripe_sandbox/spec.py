"""Stripe's OpenAPI description (``shared/stripe-openapi/spec3-subset.json``) as JSON Schema, to
check the sandbox's responses. Used by tests; the server never loads it: what it needs of the spec
to check *requests* is extracted once into ``request_schemas.py`` by ``request_schemas()``
(``python -m metering.stripe_sandbox.spec`` rewrites that file; a test holds it to the spec).

Conversion: ``$ref: #/components/schemas/X`` -> ``#/definitions/X``; ``nullable: true`` -> "or
null"; ``x-*`` keys, ``description`` and ``format`` dropped. ``strict=True`` also forbids properties
the spec does not list (Stripe's schemas leave ``additionalProperties`` open), so an invented field
fails. The converted definitions are cached in memory and on disk, keyed by the sha256 of the spec and of
this module (the converter).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_SPEC = Path(__file__).resolve().parents[3] / "shared" / "stripe-openapi" / "spec3-subset.json"
DROP = {"description", "format", "title", "example"}


def spec_path() -> Path:
    return Path(os.environ.get("STRIPE_OPENAPI_SPEC", DEFAULT_SPEC))


def convert(node: Any, strict: bool) -> Any:
    """One OpenAPI 3.0 schema object -> JSON Schema (draft 7)."""
    if isinstance(node, list):
        return [convert(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        out: dict[str, Any] = {"$ref": f"#/definitions/{name}"}
    else:
        out = {}
        for key, value in node.items():
            if key.startswith("x-") or key in DROP or key == "nullable":
                continue
            if key == "properties":
                out[key] = {name: convert(sub, strict) for name, sub in value.items()}
            elif key in ("items", "additionalProperties", "not"):
                out[key] = convert(value, strict) if isinstance(value, dict) else value
            elif key in ("anyOf", "oneOf", "allOf"):
                out[key] = convert(value, strict)
            else:
                out[key] = value
        if strict and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
    if node.get("nullable"):
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.lru_cache(maxsize=4)
def load(strict: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw spec, converted definitions), cached in memory and on disk."""
    path = spec_path()
    raw_bytes = path.read_bytes()
    spec = json.loads(raw_bytes)
    # the converter's own source is in the key: a change to it must not be hidden by an older conversion
    digest = hashlib.sha256(raw_bytes + Path(__file__).read_bytes()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path(tempfile.gettempdir())) / "stripe-sandbox-spec"
    cache = cache_dir / f"{digest}-{'strict' if strict else 'open'}.json"
    try:
        return spec, json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    definitions = {name: convert(schema, strict) for name, schema in spec["components"]["schemas"].items()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(definitions))
        os.replace(tmp, cache)
    except OSError:
        pass
    return spec, definitions


def operation_template(spec: dict[str, Any], method: str, path: str) -> str | None:
    """The spec's path template (``/v1/customers/{customer}``) matching a concrete path."""
    for template, ops in spec["paths"].items():
        if method.lower() not in ops:
            continue
        regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(regex, path):
            # prefer the template without parameters when several match (/v1/customers/search)
            if "{" not in template:
                return template
            best = template
            for other, other_ops in spec["paths"].items():
                if other != template and "{" not in other and other == path and method.lower() in other_ops:
                    return other
            return best
    return None


@functools.lru_cache(maxsize=256)
def _validator(template: str, method: str, status: str, strict: bool) -> Any:
    import jsonschema

    spec, definitions = load(strict)
    responses = spec["paths"][template][method.lower()]["responses"]
    response = responses.get(status) or responses.get("default")
    schema = response["content"]["application/json"]["schema"]
    converted = convert(schema, strict)
    converted["definitions"] = definitions
    return jsonschema.Draft7Validator(converted)


@functools.lru_cache(maxsize=64)
def _component_validator(name: str, strict: bool) -> Any:
    import jsonschema

    _, definitions = load(strict)
    return jsonschema.Draft7Validator({"$ref": f"#/definitions/{name}", "definitions": definitions})


def validate_response(method: str, path: str, status: int, body: Any, strict: bool = True) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``body`` matches the spec's response for the
    operation (errors: the ``error`` schema); raise LookupError for an operation the spec lacks."""
    spec, _ = load(strict)
    if status >= 400:
        _component_validator("error", strict).validate(body)
        return
    template = operation_template(spec, method, path)
    if template is None:
        raise LookupError(f"the spec has no operation {method} {path}")
    _validator(template, method, str(status), strict).validate(body)


def validate_object(name: str, body: Any, strict: bool = True) -> None:
    """Validate against ``components.schemas[name]`` (e.g. ``event`` for a webhook payload)."""
    _component_validator(name, strict).validate(body)


# -- request parameters ---------------------------------------------------------------------------
# What the server checks of a request (see api.check_params): the rest of a schema (descriptions,
# formats, titles, x- keys) is dropped to keep the generated module small.
REQUEST_KEYS = ("type", "enum", "maxLength", "required", "properties", "items", "anyOf")


def _request_schema(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in REQUEST_KEYS:
        if key not in node:
            continue
        value = node[key]
        if key == "properties":
            out[key] = {name: _request_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = _request_schema(value)
        elif key == "anyOf":
            out[key] = [_request_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-stripeBypassValidation"):
        # Stripe does not hold callers to this field's list of values (or its type): neither do we
        out.pop("enum", None)
        if out.get("type") == "integer":
            del out["type"]
    return out


def operation_key(method: str, template: str) -> str:
    """``POST /v1/billing/meters/{}/deactivate``: an operation, whatever its path parameters are called."""
    return f"{method.upper()} {re.sub(r'{[^}]+}', '{}', template)}"


def request_schemas(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each operation's request parameters (query string and form body together) as one object
    schema: ``{"properties": {name: schema}, "required": [names]}``. Path parameters are left out."""
    result: dict[str, dict[str, Any]] = {}
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            properties: dict[str, Any] = {}
            required: list[str] = []
            for parameter in operation.get("parameters", ()):
                if parameter["in"] != "query":
                    continue
                properties[parameter["name"]] = _request_schema(parameter.get("schema", {}))
                if parameter.get("required"):
                    required.append(parameter["name"])
            content = (operation.get("requestBody") or {}).get("content", {})
            body = content.get("application/x-www-form-urlencoded", {}).get("schema", {})
            for name, schema in body.get("properties", {}).items():
                properties[name] = _request_schema(schema)
            required += [name for name in body.get("required", ()) if name not in required]
            result[operation_key(method, template)] = {"type": "object", "properties": properties, "required": required}
    return dict(sorted(result.items()))


def _single_ref(node: dict[str, Any]) -> str | None:
    """The one component a property holds (directly, in an anyOf, as array items or as the ``data``
    of a list object), or None (a scalar, or one of several components)."""
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in node:
        refs = [ref for ref in map(_single_ref, node["anyOf"]) if ref]
        return refs[0] if len(refs) == 1 else None
    if node.get("type") == "array":
        return _single_ref(node.get("items", {}))
    data = node.get("properties", {}).get("data")
    return _single_ref(data) if node.get("type") == "object" and data else None


def expandable_fields(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each component's ``x-expandableFields`` (the fields an ``expand[]`` path may name in it) and,
    for those holding one component, its name (to check the rest of a dotted path):
    ``{"subscription": {"fields": [...], "refs": {"latest_invoice": "invoice", ...}}}``."""
    result: dict[str, dict[str, Any]] = {}
    for name, schema in sorted(spec["components"]["schemas"].items()):
        fields = schema.get("x-expandableFields")
        if not fields:
            continue
        properties = schema.get("properties", {})
        refs = {field: ref for field in sorted(fields) if (ref := _single_ref(properties.get(field, {})))}
        result[name] = {"fields": sorted(fields), "refs": refs}
    return result


def render_request_schemas(spec: dict[str, Any]) -> str:
    """The text of ``request_schemas.py`` for ``spec``."""
    lines = [
        '"""Request parameters of each operation, extracted from Stripe\'s OpenAPI description',
        f"(shared/stripe-openapi/spec3-subset.json, API version {spec['info']['version']}; MIT, Copyright (c) 2011- Stripe, Inc.).",
        "",
        "Generated by ``python -m metering.stripe_sandbox.spec``; do not edit. Only what the server checks is",
        "kept (type, enum, maxLength, required, properties, items, anyOf); see api.check_params. EXPANDABLE holds",
        "each component's x-expandableFields; see api.expand.\"\"\"",
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "SCHEMAS: dict[str, dict[str, Any]] = {",
    ]
    lines += [f"    {key!r}: {schema!r}," for key, schema in request_schemas(spec).items()]
    lines += ["}", "", "# x-expandableFields of each component: what expand[] may name (see api.expand)",
              "EXPANDABLE: dict[str, dict[str, Any]] = {"]
    lines += [f"    {key!r}: {value!r}," for key, value in expandable_fields(spec).items()]
    lines += ["}", ""]
    return "\n".join(lines)


REQUEST_SCHEMAS_MODULE = Path(__file__).resolve().parent / "request_schemas.py"


if __name__ == "__main__":
    REQUEST_SCHEMAS_MODULE.write_text(render_request_schemas(load(True)[0]))
    print(f"wrote {REQUEST_SCHEMAS_MODULE}")
