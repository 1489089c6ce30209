"""What every validated file shares: a frozen model that refuses unknown fields, bounded YAML reading,
and error messages that name the file, the field path and the bad value, however large or deep the file.

Imports neither policy nor models (both build on it) and nothing of the package: config.py, imported
by nearly every module, takes its power-of-two check from here.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

Positive = Annotated[int, Field(gt=0)]
"""A count or size; where a tile field must also be a power of two, its validator checks that."""


class Frozen(BaseModel):
    """Base of every file's models: a misspelt field is an error, not a silent default, and a loaded
    model cannot change under the callers sharing it (a policy is read once per process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def power_of_two(name: str, value: int) -> int:
    """``value``, else a ValueError naming ``name``: tile sizes, warps and the ladder's factor."""
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")
    return value


MAX_YAML_BYTES = 1 << 20
"""Largest policy or shapes file read (the shipped ones are under 2 KB): a path like /dev/zero must not hang."""
MAX_YAML_NODES = 100_000
"""Most nodes a file may expand to, each alias counted at each use: about 1 KB of aliases expands to
10**9 strings, which validation and its error message would walk."""
MAX_YAML_DEPTH = 32
"""Deepest nesting (the shipped files nest 4 levels): 1000 levels overflowed the YAML composer's recursion."""


class YAMLBoundError(yaml.MarkedYAMLError):
    """A YAML document over one of the bounds above."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document over MAX_YAML_DEPTH or MAX_YAML_NODES while composing it,
    before anything is built from it. Each node's expanded size and depth are kept by its id, so an
    alias costs a lookup, not a walk."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth), aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._expanded:  # its node is still being composed
                raise YAMLBoundError(None, None, "an alias refers to a node that contains it", mark)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YAMLBoundError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._expanded[id(node)] = self._measure(node, mark)
        return node

    def _measure(self, node: yaml.Node, mark: yaml.Mark) -> tuple[int, int]:
        """Nodes and depth of ``node`` with its aliases expanded, from its children's (composed before it)."""
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        sizes = [self._expanded[id(child)] for child in children]
        nodes = 1 + sum(n for n, _ in sizes)
        depth = 1 + max((d for _, d in sizes), default=0)
        if nodes > MAX_YAML_NODES:
            raise YAMLBoundError(None, None, f"expands to more than {MAX_YAML_NODES} nodes (aliases?)", mark)
        if depth > MAX_YAML_DEPTH:
            raise YAMLBoundError(None, None, f"expands deeper than {MAX_YAML_DEPTH} levels (aliases?)", mark)
        return nodes, depth


def read_yaml(path: Path, what: str, error: type[ValueError]) -> Any:
    """A YAML file's data; an unreadable, malformed or oversized file raises ``error`` naming the file.
    Bytes go to the parser undecoded: invalid UTF-8 is then a YAML error with its position."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise error(f"{path}: cannot read {what}: {err.strerror or err}") from err
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{path}: not a {what}: larger than {MAX_YAML_BYTES} bytes")
    try:
        return yaml.load(raw, Loader=_BoundedLoader)
    except YAMLBoundError as err:
        raise error(f"{path}: not a {what}: {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err
    except ValueError as err:  # a scalar the constructor cannot build: a date like 2001-13-45, 5000 digits
        raise error(f"{path}: not valid YAML: {short(str(err))}") from err


MAX_LISTED = 10
"""Errors a validation message lists; the rest are counted."""

_repr = reprlib.Repr()  # keyword arguments only from Python 3.12
_repr.maxlevel, _repr.maxtuple, _repr.maxlist, _repr.maxdict, _repr.maxstring, _repr.maxother = 3, 4, 4, 4, 60, 60


def short(value: object, quoted: bool = True, limit: int = 80) -> str:
    """A bad value as an error shows it: its repr (or text), cut to ``limit`` characters, however large it is
    (reprlib never builds a whole repr of a large container)."""
    text = _repr.repr(value) if quoted else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_invalid(err: ValidationError, data: object, source: str, what: str) -> str:
    """'<source>: invalid <what>', then one line per error (at most MAX_LISTED), each naming the field
    path and the bad value: '  [1] (down).k = -5: Input should be greater than 0'."""
    errors = err.errors()
    lines = [_describe(error, data) for error in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_LISTED} more")
    return f"{source}: invalid {what}\n" + "\n".join(lines)


def _describe(error: ErrorDetails, data: object) -> str:
    field = _field_path(error["loc"], data)
    if error["type"] == "missing":  # its input is the enclosing mapping, which says nothing
        return f"  {field}: missing"
    return f"  {field} = {short(error.get('input'))}: {short(error['msg'], quoted=False, limit=300)}"


def _field_path(loc: tuple[int | str, ...], data: object) -> str:
    """'ladder.order.0': the keys and indices down to the field, dotted. In a file that is a list (a shapes
    file's GEMMs) the item comes first, in brackets with its name where it has one: '[1] (down).k', so an
    error in a long list is found by name."""
    steps = list(loc)
    item = ""
    if steps and isinstance(data, list) and isinstance(steps[0], int):
        index = steps.pop(0)
        name = data[index].get("name") if isinstance(data[index], dict) else None
        item = f"[{index}]" + (f" ({short(name, quoted=False)})" if isinstance(name, str) else "")
    dotted = ".".join(short(step, quoted=False) for step in steps)
    return ".".join(part for part in (item, dotted) if part) or "<root>"
