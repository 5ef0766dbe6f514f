"""The fenced blocks of the project's Markdown, and the commands in its shell blocks, as a
reader would type them: continuations joined, ``#`` comments and prompts dropped, ``&&``
chains split, redirections taken off, ``NAME=value`` lines remembered for later ``$NAME``."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```", re.M | re.S)
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S+)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def markdown_files() -> list[Path]:
    """What a user reads: the README, docs/ (but the generated reference), the examples' and bench's READMEs."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("**/README.md")),
             ROOT / "bench" / "README.md"]
    return [f for f in files if f.is_file() and f.name != "reference.md"]


def blocks(paths: list[Path] | None = None) -> Iterator[Block]:
    for path in paths or markdown_files():
        text = path.read_text()
        for match in _FENCE.finditer(text):
            yield Block(path, text.count("\n", 0, match.start()) + 1, match.group(1).lower(), match.group(2))


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # NAME=value lines seen before it in the block
    stdout_to: str | None = None  # `> FILE`

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name


def _balanced(line: str) -> bool:
    try:
        shlex.split(line, comments=True)
        return True
    except ValueError:  # a quote left open: the string goes on on the next line, as in a shell
        return False


def _lines(text: str) -> Iterator[str]:
    joined = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("$ ") and not joined:
            line = line[2:]
        if line.endswith("\\"):
            joined += line[:-1] + " "
            continue
        if not _balanced(joined + line):
            joined += line + "\n"
            continue
        yield joined + line
        joined = ""
    if joined:
        yield joined


def _expand(line: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), line)


def commands(text: str) -> Iterator[Command]:
    env: dict[str, str] = {}
    for line in _lines(text):
        try:
            words = shlex.split(_expand(line, env), comments=True)
        except ValueError:  # an unbalanced quote: the caller reports the block
            raise ValueError(f"cannot split {line!r}")
        if not words:
            continue
        if len(words) == 1 and _ASSIGNMENT.match(words[0]):
            name, value = _ASSIGNMENT.match(words[0]).groups()
            env[name] = value
            continue
        for part, target in _split_chain(words):
            yield Command(tuple(part), tuple(sorted(env.items())), target)


def _split_chain(words: list[str]) -> Iterator[tuple[list[str], str | None]]:
    part: list[str] = []
    target: str | None = None
    redirect = ""
    for word in words:
        if redirect:
            target = word if redirect in (">", ">>") else target
            redirect = ""
            continue
        if word in ("&&", "||", ";", "|"):
            if part:
                yield part, target
            part, target = [], None
        elif word in (">", ">>", "2>", "<"):
            redirect = word
        elif word == "2>&1" or re.fullmatch(r"[12]?>>?\S+", word):
            continue
        else:
            part.append(word)
    if part:
        yield part, target
