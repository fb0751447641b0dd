"""Label and field selectors, as `kubectl get -l ...` / `--field-selector ...` send them.

Pure functions: parse once into a predicate, apply to each stored object. Parse errors raise
ValueError (the server answers 400 BadRequest, as a real apiserver does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(\S*)\s*$")
_KEY_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*$")


def _split_requirements(text: str) -> list[str]:
    """Split on commas that are not inside `in (...)` parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _label_requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if m := _SET_RE.match(text):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: key not in labels or labels[key] not in values
    if m := _EQ_RE.match(text):
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if m := _KEY_RE.match(text):
        negate, key = m.group(1) == "!", m.group(2)
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ValueError(f"unable to parse requirement: {text!r}")


def label_selector(text: str | None) -> Predicate:
    """`a=b,c!=d,!e,f,g in (x,y)` -> predicate on an object's metadata.labels."""
    if not text or not text.strip():
        return lambda obj: True
    reqs = [_label_requirement(part) for part in _split_requirements(text)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req(labels) for req in reqs)

    return match


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string value at a dotted path (`spec.nodeName`), "" when absent, as Kubernetes' field sets."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def field_selector(text: str | None) -> Predicate:
    """`metadata.name=x,spec.nodeName!=y` -> predicate on the object."""
    if not text or not text.strip():
        return lambda obj: True
    reqs: list[tuple[str, bool, str]] = []
    for part in _split_requirements(text):
        m = _EQ_RE.match(part)
        if not m:
            raise ValueError(f"invalid field selector: {part!r}")
        reqs.append((m.group(1), m.group(2) == "!=", m.group(3)))

    def match(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, path) != value) if negate else (field_value(obj, path) == value)
                   for path, negate, value in reqs)

    return match
