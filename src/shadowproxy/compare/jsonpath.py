"""A small JSON path subset, shared by extraction, ``compare.ignore`` and redaction.

Supported: ``$`` (the root), ``.key``, ``['key']`` / ``["key"]`` (any characters),
``[N]`` (an index, negative from the end) and ``[*]`` / ``.*`` (every element or
value). That covers ``$.predictions``, ``$.outputs[0].data``,
``$.choices[*].message.content`` and ``$.instances[*].email``. Paths are parsed once
(at config load, so a malformed one is a config error) and applied to parsed JSON
with no I/O. Applying never raises: a path that does not fit the document finds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WILDCARD = "*"


class _Wildcard:
    __slots__ = ()

    def __repr__(self) -> str:
        return "[*]"


ANY = _Wildcard()

Step = str | int | _Wildcard

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_INDEX = re.compile(r"\[(-?\d+)\]")
_QUOTED = re.compile(r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""")


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]

    def find(self, doc: Any) -> list[Any]:
        """Every value the path selects, in document order."""
        current = [doc]
        for step in self.steps:
            current = [child for node in current for child in _children(node, step)]
            if not current:
                break
        return current

    def replace(self, doc: Any, value: Any) -> Any:
        """A copy of ``doc`` with every selected value replaced; unselected parts shared.
        ``$`` selects the whole document (``redact: ["$"]`` hides the whole body)."""
        if not self.steps:
            return value
        return _rewrite(doc, self.steps, lambda _old: (True, value))

    def map(self, doc: Any, function: Callable[[Any], Any]) -> Any:
        """A copy of ``doc`` with every selected value ``v`` replaced by ``function(v)``."""
        if not self.steps:
            return function(doc)
        return _rewrite(doc, self.steps, lambda old: (True, function(old)))

    def delete(self, doc: Any) -> Any:
        """A copy of ``doc`` without the selected values (keys removed, items dropped).
        ``$`` deletes nothing: there is no document without its root."""
        return _rewrite(doc, self.steps, lambda _old: (False, None))

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> JsonPath:
    """Compile a path; ``ValueError`` names the position of the first problem."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise ValueError(f"JSON path must start with '$', got {text!r}")
    steps: list[Step] = []
    pos = 1
    while pos < len(text):
        char = text[pos]
        if text.startswith(".*", pos):
            steps.append(ANY)
            pos += 2
        elif char == ".":
            match = _KEY.match(text, pos + 1)
            if match is None:
                raise ValueError(f"JSON path {text!r}: expected a key after '.' at position {pos}")
            steps.append(match.group())
            pos = match.end()
        elif text.startswith("[*]", pos):
            steps.append(ANY)
            pos += 3
        elif (match := _INDEX.match(text, pos)) is not None:
            steps.append(int(match.group(1)))
            pos = match.end()
        elif (match := _QUOTED.match(text, pos)) is not None:
            raw = match.group(1) if match.group(1) is not None else match.group(2)
            steps.append(re.sub(r"\\(.)", r"\1", raw))
            pos = match.end()
        else:
            raise ValueError(
                f"JSON path {text!r}: unexpected {char!r} at position {pos} "
                "(supported: .key, ['key'], [N], [*])"
            )
    return JsonPath(text, tuple(steps))


def _children(node: Any, step: Step) -> list[Any]:
    if isinstance(step, _Wildcard):
        if isinstance(node, list):
            return node
        if isinstance(node, dict):
            return list(node.values())
        return []
    if isinstance(step, int):
        if isinstance(node, list) and -len(node) <= step < len(node):
            return [node[step]]
        return []
    if isinstance(node, dict) and step in node:
        return [node[step]]
    return []


def _rewrite(node: Any, steps: tuple[Step, ...], action: Callable[[Any], tuple[bool, Any]]) -> Any:
    """Apply ``action`` at the end of the path; it returns (keep, new value)."""
    if not steps:
        return node
    step, rest = steps[0], steps[1:]
    if isinstance(node, dict):
        keys = list(node) if isinstance(step, _Wildcard) else [step] if step in node else []
        if not keys:
            return node
        out = dict(node)
        for key in keys:
            _apply(out, key, out[key], rest, action)
        return out
    if isinstance(node, list):
        if isinstance(step, _Wildcard):
            indexes = list(range(len(node)))
        elif isinstance(step, int) and -len(node) <= step < len(node):
            indexes = [step % len(node)]
        else:
            return node
        out_list: list[Any] = list(node)
        removed: set[int] = set()
        for index in indexes:
            if rest:
                out_list[index] = _rewrite(node[index], rest, action)
            else:
                keep, value = action(node[index])
                if keep:
                    out_list[index] = value
                else:
                    removed.add(index)
        return [item for i, item in enumerate(out_list) if i not in removed]
    return node


def _apply(
    out: dict[Any, Any],
    key: Any,
    child: Any,
    rest: tuple[Step, ...],
    action: Callable[[Any], tuple[bool, Any]],
) -> None:
    if rest:
        out[key] = _rewrite(child, rest, action)
        return
    keep, value = action(child)
    if keep:
        out[key] = value
    else:
        del out[key]
