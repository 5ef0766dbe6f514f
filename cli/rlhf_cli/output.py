"""How the ``rlhf`` command prints objects and what its exit codes mean, as kubectl does:
``-o yaml`` (the default) writes a YAML stream, ``-o json`` one object, or a ``v1`` ``List``
holding several."""

from __future__ import annotations

import json
from typing import Sequence

import yaml

EXIT_OK = 0
EXIT_UNREADABLE = 1  # a file that cannot be read at all (missing, a directory, no permission)
EXIT_INVALID = 2  # input that was read but is refused: not YAML, or not a valid RLHFJob

FORMATS = ("yaml", "json")


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # noqa: D401 - yaml hook
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # Code and configs read best as literal blocks; YAML cannot write those with trailing spaces.
    if "\n" in data and not any(line != line.rstrip() for line in data.splitlines()):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_NoAliasDumper.add_representer(str, _str_presenter)


def dump_yaml_documents(objects: Sequence[dict]) -> str:
    return yaml.dump_all(objects, Dumper=_NoAliasDumper, sort_keys=False, width=120)


def dump_json(objects: Sequence[dict]) -> str:
    """One object as itself; several wrapped in a List, as `kubectl get -o json` prints them."""
    value = objects[0] if len(objects) == 1 else {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    return json.dumps(value, indent=2) + "\n"


def formatted(objects: Sequence[dict], fmt: str) -> str:
    if fmt == "json":
        return dump_json(objects)
    return dump_yaml_documents(objects)


def worst(*codes: int) -> int:
    """The exit code of a command that handled several inputs: the worst of theirs."""
    return max(codes, default=EXIT_OK)
