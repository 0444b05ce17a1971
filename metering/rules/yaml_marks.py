"""A YAML reader that remembers where every value came from, so rule errors can name the line.

`load_yaml(path)` returns the document as plain Python values (dicts, lists, scalars typed by YAML's
safe resolver: an unquoted `0.1` is a float, `2026-01-01` a date) together with a `Marks` table that
maps each value's path (`("versions", 0, "charges", 1, "unit_amount")`) to its 1-based line.
Duplicate mapping keys, which plain `yaml.safe_load` silently collapses, are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from metering.errors import BadInputError

PathKey = tuple[Any, ...]


def _timestamp_or_text(constructor: SafeConstructor, node: ScalarNode) -> Any:
    """YAML's timestamp, except that a date-shaped scalar that is no date (`2026-02-30`,
    `2026-01-01T25:00:00`) stays the text it is, so the rule checks report it on its line instead
    of the reader crashing with Python's 'day is out of range for month'."""
    try:
        return SafeConstructor.construct_yaml_timestamp(constructor, node)
    except ValueError:
        return constructor.construct_scalar(node)


class _Constructor(SafeConstructor):
    """YAML's safe constructor with `_timestamp_or_text`."""


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


class SafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with `_timestamp_or_text`, for files read without line marks."""


SafeLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def render_path(path: PathKey) -> str:
    """`("versions", 0, "charges")` -> `versions[0].charges`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


@dataclass
class Marks:
    """Line numbers by value path, plus the problems found while reading (duplicate keys)."""

    lines: dict[PathKey, int] = field(default_factory=dict)
    problems: list[tuple[PathKey, str]] = field(default_factory=list)
    raw: dict[PathKey, str] = field(default_factory=dict)   # scalars as written (e.g. `0.000002`, not 2e-06)
    built: set[int] = field(default_factory=set)             # nodes built once (id): again means an alias
    repeats: int = 0                                         # values built again through aliases (bounded)

    def line(self, path: PathKey) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


class _AliasTrouble(Exception):
    def __init__(self, line: int, what: str) -> None:
        self.line, self.what = line, what


MAX_REPEATS = 100_000
"""Values a rules file's aliases may repeat: each alias repeats its anchor's values, so a few nested
ones can make billions (and one that contains itself, endless recursion). Values written out, with
no alias, are not limited."""


def _build(node: Node, path: PathKey, marks: Marks, constructor: SafeConstructor,
           ancestors: frozenset[int] = frozenset()) -> Any:
    if id(node) in ancestors:
        raise _AliasTrouble(node.start_mark.line + 1, "an alias that contains itself")
    if id(node) in marks.built:
        marks.repeats += 1
        if marks.repeats > MAX_REPEATS:
            raise _AliasTrouble(node.start_mark.line + 1, f"aliases repeating more than {MAX_REPEATS} values")
    marks.built.add(id(node))
    ancestors = ancestors | {id(node)}
    marks.lines[path] = node.start_mark.line + 1
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(constructor, key_node) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                marks.problems.append((path, f"line {key_node.start_mark.line + 1}: mapping keys must be plain names"))
                continue
            if key in out:
                marks.problems.append((path + (key,), f"duplicate key {key!r} (line {key_node.start_mark.line + 1})"))
                continue
            out[key] = _build(value_node, path + (key,), marks, constructor, ancestors)
        return out
    if isinstance(node, SequenceNode):
        return [_build(item, path + (i,), marks, constructor, ancestors) for i, item in enumerate(node.value)]
    marks.raw[path] = node.value
    return _construct(constructor, node)


TAG_MISFITS = (ValueError, KeyError, AttributeError, TypeError)
"""What PyYAML's int, float, bool and timestamp constructors raise, instead of a YAML error, for a value
that does not fit its explicit tag (`!!int abc`, `!!bool maybe`)."""


def _construct(constructor: SafeConstructor, node: Node) -> Any:
    """A scalar's value; one that does not fit its explicit tag is a ConstructorError on its line."""
    try:
        return constructor.construct_object(node, deep=True)
    except TAG_MISFITS:
        raise ConstructorError(None, None, f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                               node.start_mark) from None


def parse_yaml(text: str, source: str) -> tuple[Any, Marks]:
    """Parse one YAML document, returning values and their line marks. Raises BadInputError on syntax."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInputError(f"{where}: (document): not valid YAML: {problem}") from None
    marks = Marks()
    if node is None:
        return None, marks
    try:
        return _build(node, (), marks, _Constructor()), marks
    except _AliasTrouble as exc:
        raise BadInputError(f"{source}:{exc.line}: (document): {exc.what}: write the values out") from None
    except yaml.YAMLError as exc:  # an explicit tag that does not fit its value (`!!int abc`)
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise BadInputError(f"{where}: (document): {getattr(exc, 'problem', None) or exc}") from None


def load_yaml(path: str | Path) -> tuple[Any, Marks]:
    """Read and parse `path` (see `parse_yaml`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_yaml(text, str(path))
