"""The repository's Dockerfile read as instructions, for tests that replay or check it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import attrs

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


@attrs.frozen
class Instruction:
    keyword: str  # upper case: FROM, COPY, ENV, ...
    arguments: str  # the rest, continuation lines joined

    def words(self) -> list[str]:
        """The arguments of the exec (JSON array) form, or split as a shell would."""
        if self.arguments.startswith("["):
            value = json.loads(self.arguments)
            assert isinstance(value, list)
            return [str(word) for word in value]
        return shlex.split(self.arguments)


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return found


def stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """Instructions per build stage, each starting at its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def environment(stage: list[Instruction]) -> dict[str, str]:
    """The stage's ENV settings (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in instruction.words():
                name, _, value = word.partition("=")
                env[name] = value
    return env


def last(stage: list[Instruction], keyword: str) -> Instruction:
    return [i for i in stage if i.keyword == keyword][-1]


def healthcheck_command(stage: list[Instruction]) -> list[str]:
    """The HEALTHCHECK's CMD in exec form (its options, like --interval, come first)."""
    arguments = last(stage, "HEALTHCHECK").arguments
    _, _, command = arguments.partition("CMD ")
    return Instruction("CMD", command.strip()).words()
