"""Parse Stripe-style form-encoded bodies and query strings into nested Python values.

Stripe encodes nested parameters with brackets: ``items[0][price]=price_1``, ``metadata[k]=v``,
``expand[]=customer`` (append) or ``expand[0]=customer`` (the official SDK's indexed form).
Values stay strings; handlers coerce them. A dict whose keys are all decimal indices becomes a list,
except under map-valued parameters (``metadata``, ``payload``) whose keys are user data.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

MAP_KEYS = frozenset({"metadata", "payload"})
_SEGMENT = re.compile(r"\[([^\]]*)\]")


class FormError(ValueError):
    """The body or query string cannot be parsed as Stripe parameters."""


def _split(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not bracket:
        return [key]
    rest = "[" + rest
    parts = [head]
    pos = 0
    for match in _SEGMENT.finditer(rest):
        if match.start() != pos:
            raise FormError(f"Invalid parameter name: {key!r}")
        parts.append(match.group(1))
        pos = match.end()
    if pos != len(rest) or not head:
        raise FormError(f"Invalid parameter name: {key!r}")
    return parts


def _listify(value: Any, parent: str | None) -> Any:
    if isinstance(value, dict):
        converted = {k: _listify(v, k) for k, v in value.items()}
        if parent not in MAP_KEYS and converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    return value


def parse_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn decoded key/value pairs into a nested dict (lists where keys are indices)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _split(key)
        node: dict[str, Any] = root
        for i, part in enumerate(parts):
            if part == "":  # `a[]=x` appends
                part = str(len(node))
            if i == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return _listify(root, None)


def parse_form(body: bytes | str) -> dict[str, Any]:
    """Parse an ``application/x-www-form-urlencoded`` body or a query string."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormError("Request body is not valid UTF-8") from exc
    return parse_pairs(parse_qsl(body, keep_blank_values=True))
