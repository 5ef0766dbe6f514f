"""Reading an OpenRLHF training command the way a shell and its launchers would: line
continuations and comments, a ``ray job submit … --`` prefix, ``python3 -m``, ``deepspeed`` and
``torchrun`` launchers, then the trainer's own flags (rlhf_cli.openrlhf_flags says how many
values each takes)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from .openrlhf_flags import BY_NAME, arity

ENTRY_MODULES = ("openrlhf.cli.train_ppo_ray", "openrlhf.cli.train_ppo")

# Launcher options that say where the trainers run: (nodes, GPUs per node).
_NODES = ("--num_nodes", "--nnodes", "--num-nodes")
_GPUS = ("--num_gpus", "--nproc_per_node", "--nproc-per-node", "--num-gpus")
# Launcher and `ray job submit` options that take a value (so it is not read as the program).
_VALUED = _NODES + _GPUS + ("--address", "--working-dir", "--runtime-env", "--runtime-env-json", "--submission-id",
                            "--entrypoint-num-cpus", "--entrypoint-num-gpus", "--entrypoint-memory",
                            "--entrypoint-resources", "--metadata-json", "--hostfile", "--include", "--exclude",
                            "--master_addr", "--master_port", "--node_rank", "--rdzv_endpoint", "--rdzv_backend",
                            "--rdzv-endpoint", "--rdzv-backend", "--master-addr", "--master-port", "--node-rank",
                            "--launcher", "--headers")
# Prefix options whose effect the job cannot carry (packages, files, environment of the run).
_LOST = ("--runtime-env", "--runtime-env-json")


class CommandError(ValueError):
    """A command that cannot be read as an OpenRLHF training command."""


@dataclass
class Command:
    """The flags of one OpenRLHF training command, in the order given."""

    module: str
    flags: list[tuple[str, list[str]]] = field(default_factory=list)  # known to openrlhf_flags
    unknown: list[tuple[str, list[str]]] = field(default_factory=list)  # not in the table
    ignored_prefix: list[str] = field(default_factory=list)  # launcher options with no meaning for a job
    lost_prefix: list[str] = field(default_factory=list)  # launcher parts the job does not carry
    launcher_nodes: Optional[int] = None
    launcher_gpus: Optional[int] = None
    working_dir: Optional[str] = None


_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:  # an unclosed quote
        raise CommandError(f"cannot split the command into words: {exc}") from None


def _expand(word: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME} set earlier in the script; others stay as written (and are reported)."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), word)


def split_command(text: str) -> list[str]:
    """The words of the OpenRLHF command in a shell script or a pasted command: backslash-newline
    continues a line, '#' starts a comment, and ``NAME=value`` / ``export NAME=value`` lines
    before the command set the $NAME it uses. A script must run exactly one OpenRLHF trainer."""
    variables: dict[str, str] = {}
    commands = []
    for line in re.sub(r"\\\r?\n", " ", text).splitlines():
        words = _words(line)
        if words[:1] == ["export"]:
            words = words[1:]
        if words and all(_ASSIGNMENT.match(w) for w in words):
            for word in words:
                name, value = _ASSIGNMENT.match(word).groups()
                variables[name] = _expand(value, variables)
        elif any("openrlhf" in w or "train_ppo" in w for w in words):
            commands.append([_expand(w, variables) for w in words])
    if len(commands) > 1:
        raise CommandError(f"the script runs {len(commands)} OpenRLHF commands; give one at a time")
    return commands[0] if commands else []


def _entry(tokens: list[str]) -> tuple[int, int, str]:
    """Where the program (python3, deepspeed, torchrun...) ends and the trainer's own flags
    start, and the trainer module."""
    for i, token in enumerate(tokens):
        module, end = None, i
        if token in ("-m", "--module") and i + 1 < len(tokens):
            module, start = tokens[i + 1], i + 2
        elif token.endswith(".py") and "openrlhf/cli/" in token:
            module, start = token[token.index("openrlhf/cli/"):-3].replace("/", "."), i + 1
        elif token.startswith("openrlhf.cli."):  # `deepspeed --module openrlhf.cli.x` split oddly
            module, start = token, i + 1
        if module is None:
            continue
        if module in ENTRY_MODULES:
            return end, start, module
        if module.startswith("openrlhf."):
            raise CommandError(f"{module} is not RL training: rlhf convert reads openrlhf.cli.train_ppo_ray commands")
    raise CommandError("found no OpenRLHF trainer in the command: expected `python3 -m openrlhf.cli.train_ppo_ray"
                       " --pretrain ... --remote_rm_url ...` (after any `ray job submit ... --` or launcher)")


def _int(option: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"{option} expects a whole number (got {value!r})") from None


def _read_prefix(tokens: list[str], command: Command) -> None:
    """What the words before the trainer say: launcher GPUs, the working directory, and what is lost."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        option, has_value, value = token.partition("=")
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):  # VAR=value before the program
            command.lost_prefix.append(f"environment variable {option} (set it in spec.cluster.env)")
        elif option in _VALUED and not has_value and i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 1
            has_value = "="
        if has_value and option in _NODES:
            command.launcher_nodes = _int(option, value)
        elif has_value and option in _GPUS:
            command.launcher_gpus = _int(option, value)
        elif has_value and option == "--working-dir":
            command.working_dir = value
        elif option in _LOST:
            command.lost_prefix.append(f"{option} (install packages in the worker image, spec.cluster.image)")
        elif token.startswith("-") and token != "--":
            command.ignored_prefix.append(option)
        i += 1


def parse_command(tokens: list[str]) -> Command:
    """The trainer module and its flags; unknown flags keep the values that follow them."""
    if len(tokens) == 1 and re.search(r"\s", tokens[0]):
        tokens = split_command(tokens[0])
    end, start, module = _entry(tokens)
    command = Command(module)
    _read_prefix(tokens[:end], command)
    rest, i = tokens[start:], 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            command.unknown.append((token, []))
            i += 1
            continue
        name, has_value, inline = token.partition("=")
        flag = BY_NAME.get(name)
        want = arity(flag) if flag is not None else -1
        if has_value:
            values, i = [inline], i + 1
        else:
            end = i + 1
            while end < len(rest) and not rest[end].startswith("--") and (want < 0 or end - i - 1 < want):
                end += 1
            values, i = rest[i + 1:end], end
        if flag is None:
            command.unknown.append((name, values))
            continue
        if want >= 0 and len(values) != want and not (want == 0 and has_value):
            raise CommandError(f"{name} takes {want} value(s) (got {len(values)}: {' '.join(values) or 'none'})")
        command.flags.append((name, values))
    return command
