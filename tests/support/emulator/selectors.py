"""Label and field selectors, parsed once into predicates (for LIST, WATCH and deletecollection)."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .common import Obj
from .errors import ApiError

_LABEL_KEY = r'[A-Za-z0-9_./-]+'
_LABEL_VAL = r'[A-Za-z0-9_./-]*'


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ''
    for ch in text:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(selector: str | None) -> Callable[[Mapping[str, str]], bool] | None:
    """Parse a label selector (``a=b,c!=d,e in (f,g),!h,i``) into a predicate on labels."""
    if not selector:
        return None
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_top_level(selector):
        if m := re.fullmatch(rf'({_LABEL_KEY})\s*(==|=|!=)\s*({_LABEL_VAL})', term):
            key, op, val = m.groups()
            if op == '!=':
                checks.append(lambda labels, k=key, v=val: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=val: k in labels and labels[k] == v)
        elif m := re.fullmatch(rf'({_LABEL_KEY})\s+(in|notin)\s*\(([^)]*)\)', term):
            key, op, raw = m.groups()
            values = {v.strip() for v in raw.split(',') if v.strip()}
            if op == 'in':
                checks.append(lambda labels, k=key, vs=values: k in labels and labels[k] in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: k not in labels or labels[k] not in vs)
        elif m := re.fullmatch(rf'!\s*({_LABEL_KEY})', term):
            checks.append(lambda labels, k=m.group(1): k not in labels)
        elif m := re.fullmatch(rf'({_LABEL_KEY})', term):
            checks.append(lambda labels, k=m.group(1): k in labels)
        else:
            raise ApiError.bad_request(f'unable to parse requirement: {term!r}')
    return lambda labels: all(check(labels) for check in checks)


def _dig(obj: Any, path: str) -> str:
    node = obj
    for part in path.split('.'):
        if not isinstance(node, dict) or part not in node:
            return ''
        node = node[part]
    if isinstance(node, bool):
        return 'true' if node else 'false'
    return '' if node is None else str(node)


def parse_field_selector(selector: str | None) -> Callable[[Obj], bool] | None:
    """Parse a field selector (``metadata.name=x,involvedObject.uid!=y``) into a predicate on objects."""
    if not selector:
        return None
    checks: list[Callable[[Obj], bool]] = []
    for term in _split_top_level(selector):
        m = re.fullmatch(r'([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)', term)
        if not m:
            raise ApiError.bad_request(f'invalid field selector: {term!r}')
        path, op, val = m.groups()
        if op == '!=':
            checks.append(lambda obj, p=path, v=val: _dig(obj, p) != v)
        else:
            checks.append(lambda obj, p=path, v=val: _dig(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)

