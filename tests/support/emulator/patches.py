"""
The three patch formats of the API: JSON merge (RFC 7386), JSON patch (RFC 6902) and an
approximated strategic merge. Pure functions on plain data; the inputs are never mutated.

Stock KMock answers a failed JSON-patch ``test`` with 500; here it raises
:class:`JSONPatchError`, which the store turns into 422 Invalid, as the apiserver answers.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any


class JSONPatchError(ValueError):
    """A JSON patch that cannot be applied (bad pointer, failed ``test``, unknown op)."""


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. Returns a new value; never mutates the inputs."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# Merge keys of the built-in types (containers/env/volumes by name, ports, mounts, conditions...).
_SMP_MERGE_KEYS = ('name', 'containerPort', 'mountPath', 'devicePath', 'type', 'ip', 'topologyKey')


def _smp_strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _smp_strip(v) for k, v in value.items() if not k.startswith('$')}
    if isinstance(value, list):
        return [_smp_strip(v) for v in value]
    return value


def _smp_merge_key(old: list[Any], new: list[Any]) -> str | None:
    if not new or not all(isinstance(item, dict) for item in [*old, *new]):
        return None
    for key in _SMP_MERGE_KEYS:
        if all(key in item for item in new) and all(key in item for item in old):
            return key
    return None


def _smp_list(old: list[Any], new: list[Any]) -> list[Any]:
    key = _smp_merge_key(old, new)
    if key is None:
        return _smp_strip(new)  # primitives & unknown lists: replaced, as for most non-merge lists
    result = list(old)
    index = {item[key]: i for i, item in enumerate(result)}
    for item in new:
        if item.get('$patch') == 'delete':
            if item[key] in index:
                result[index[item[key]]] = None
            continue
        if item[key] in index:
            result[index[item[key]]] = apply_strategic_merge_patch(result[index[item[key]]], item)
        else:
            index[item[key]] = len(result)
            result.append(_smp_strip(item))
    return [item for item in result if item is not None]


def _smp_reorder(items: list[Any], order: list[Any]) -> list[Any]:
    def ident(item: Any) -> Any:
        if isinstance(item, dict):
            return json.dumps(item, sort_keys=True)
        return json.dumps(item)
    if all(isinstance(o, dict) and len(o) == 1 for o in order) and all(isinstance(i, dict) for i in items):
        key = next(iter(order[0])) if order else None
        positions = {json.dumps(o[key]): n for n, o in enumerate(order) if key in o}
        return sorted(items, key=lambda i: positions.get(json.dumps(i.get(key)), len(positions)))
    positions = {ident(o): n for n, o in enumerate(order)}
    return sorted(items, key=lambda i: positions.get(ident(i), len(positions)))


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """
    An approximation of the strategic merge patch (no schemas are known here).

    Dicts merge as in RFC 7386; ``$patch: replace|delete``, ``$retainKeys``,
    ``$setElementOrder/…`` and ``$deleteFromPrimitiveList/…`` directives are
    honoured or dropped; lists of dicts merge by a conventional merge key
    (``name``, ``containerPort``, ``mountPath``, ``type``, …) if all items
    have it; other lists are replaced.
    """
    if not isinstance(patch, dict):
        return _smp_strip(patch)
    directive = patch.get('$patch')
    if directive == 'replace':
        return _smp_strip(patch)
    if directive == 'delete':
        return None
    result = dict(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    retain: list[str] | None = None
    for key, value in patch.items():
        if key.startswith('$setElementOrder/'):
            orders[key.split('/', 1)[1]] = value
        elif key.startswith('$deleteFromPrimitiveList/'):
            deletions[key.split('/', 1)[1]] = value
        elif key == '$retainKeys':
            retain = list(value or [])
        elif key.startswith('$'):
            continue
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _smp_list(result[key], value)
        else:
            merged = apply_strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [item for item in result[key] if item not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list) and isinstance(order, list):
            result[key] = _smp_reorder(result[key], order)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise JSONPatchError(f'invalid path: {path!r}')
    if path == '':
        return []
    if not path.startswith('/'):
        raise JSONPatchError(f'invalid JSON pointer: {path!r}')
    return [part.replace('~1', '/').replace('~0', '~') for part in path[1:].split('/')]


def _index(container: list[Any], token: str, *, for_add: bool = False) -> int:
    if for_add and token == '-':
        return len(container)
    if not re.fullmatch(r'0|[1-9][0-9]*', token):
        raise JSONPatchError(f'invalid array index: {token!r}')
    idx = int(token)
    if idx > len(container) or (not for_add and idx == len(container)):
        raise JSONPatchError(f'array index out of range: {idx}')
    return idx


def _resolve(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise JSONPatchError(f'path not found: /{"/".join(tokens)}')
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token)]
        else:
            raise JSONPatchError(f'path not found: /{"/".join(tokens)}')
    return node


def apply_json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch. Returns a new document; raises ``ValueError`` on failures."""
    if not isinstance(ops, list):
        raise JSONPatchError('a JSON patch must be a list of operations')
    doc = copy.deepcopy(doc)

    def add(tokens: list[str], value: Any) -> None:
        nonlocal doc
        if not tokens:
            doc = value
            return
        parent = _resolve(doc, tokens[:-1])
        if isinstance(parent, dict):
            parent[tokens[-1]] = value
        elif isinstance(parent, list):
            parent.insert(_index(parent, tokens[-1], for_add=True), value)
        else:
            raise JSONPatchError(f'cannot add to a non-container at /{"/".join(tokens)}')

    def remove(tokens: list[str]) -> Any:
        nonlocal doc
        if not tokens:
            raise JSONPatchError('cannot remove the root')
        parent = _resolve(doc, tokens[:-1])
        if isinstance(parent, dict):
            if tokens[-1] not in parent:
                raise JSONPatchError(f'path not found: /{"/".join(tokens)}')
            return parent.pop(tokens[-1])
        elif isinstance(parent, list):
            return parent.pop(_index(parent, tokens[-1]))
        raise JSONPatchError(f'path not found: /{"/".join(tokens)}')

    for op in ops:
        if not isinstance(op, dict) or 'op' not in op or 'path' not in op:
            raise JSONPatchError(f'invalid operation: {op!r}')
        name, tokens = op['op'], _pointer(op['path'])
        if name in ('add', 'replace', 'test') and 'value' not in op:
            raise JSONPatchError(f'missing value in: {op!r}')
        if name == 'add':
            add(tokens, copy.deepcopy(op['value']))
        elif name == 'remove':
            remove(tokens)
        elif name == 'replace':
            _resolve(doc, tokens)  # must exist
            if tokens:
                remove(tokens)
            add(tokens, copy.deepcopy(op['value']))
        elif name == 'move':
            value = remove(_pointer(op.get('from')))
            add(tokens, value)
        elif name == 'copy':
            add(tokens, copy.deepcopy(_resolve(doc, _pointer(op.get('from')))))
        elif name == 'test':
            try:
                actual = _resolve(doc, tokens)
            except JSONPatchError:
                raise JSONPatchError(f'testing value {op["path"]} failed: path not found') from None
            if actual != op['value']:
                raise JSONPatchError(f'testing value {op["path"]} failed: test failed')
        else:
            raise JSONPatchError(f'unknown operation: {name!r}')
    return doc
