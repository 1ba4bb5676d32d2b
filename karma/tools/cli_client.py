"""`karma-trio cli`: talk to a server by hand, one command at a time or interactively.

    karma-trio cli ping                               # system.ping
    karma-trio cli sum api_requests 42                # counter.sum
    karma-trio cli call tree.top series=api_requests limit=5
    karma-trio cli '{"op":"tree.list"}'               # a raw request; "v": 2 is added
    karma-trio cli                                    # interactive, with history and completion

A field value is JSON when it parses as JSON (`key=42`, `range={"from":20260501,"to":20260531}`)
and a string otherwise (`series=api_requests`); quote a string that looks like JSON
(`series="2026"`). Answers are pretty-printed, or printed as the server sent them with `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from karma.tools import completion
from karma.tools.session import Address, Answer, Exit, Session, UnreachableError

HISTORY_ENV: Final = "KARMA_CLI_HISTORY"
DEFAULT_HISTORY: Final = "~/.karma_trio_history"
#: how a raw JSON request begins (an array is refused as one, rather than sent as an op name)
RAW_JSON: Final = ("{", "[")


class UsageError(Exception):
    """A command that cannot be turned into a request; nothing is sent."""


@attrs.frozen
class Shorthand:
    """A one-word command for a frequent op, its fields given by position. The series is
    always text (a series may be named `2026`); the other positions follow the JSON rule."""

    word: str
    op: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def request(self, words: list[str]) -> dict[str, Any]:
        positional = [w for w in words if "=" not in w]
        names = self.required + self.optional
        if not len(self.required) <= len(positional) <= len(names):
            raise UsageError(f"usage: {self.usage}")
        request: dict[str, Any] = {"op": self.op}
        for name, word in zip(names, positional, strict=False):
            request[name] = word if name == "series" else field_value(word)
        request.update(parse_fields([w for w in words if "=" in w]))
        return request

    @property
    def usage(self) -> str:
        names = [n.upper() for n in self.required] + [f"[{n.upper()}]" for n in self.optional]
        return " ".join([self.word, *names, "[field=value ...]"])


SHORTHANDS: Final[dict[str, Shorthand]] = {
    s.word: s
    for s in (
        Shorthand("ping", "system.ping"),
        Shorthand("health", "system.health"),
        Shorthand("stats", "system.stats"),
        Shorthand("trees", "tree.list"),
        Shorthand("sum", "counter.sum", ("series", "key")),
        Shorthand("increment", "counter.increment", ("series", "key"), ("value",)),
    )
}


def field_value(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: json.loads would accept them


def parse_fields(words: Sequence[str]) -> dict[str, object]:
    fields: dict[str, object] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or not name:
            raise UsageError(f"{word!r}: expected field=value")
        fields[name] = field_value(value)
    return fields


def raw_request(text: str) -> dict[str, Any]:
    try:
        request = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise UsageError(f"not a JSON request: {exc}") from None
    if not isinstance(request, dict):
        raise UsageError("a raw request is one JSON object")
    return request


def parse_command(words: Sequence[str]) -> dict[str, Any]:
    """Command words (from the shell, or an interactive line) → the request to send."""
    if not words:
        raise UsageError("nothing to send")
    first, rest = words[0], list(words[1:])
    if first.startswith(RAW_JSON):
        return raw_request(" ".join(words))
    if first == "call":
        if not rest:
            raise UsageError("usage: call OP [field=value ...]")
        return {"op": rest[0], **parse_fields(rest[1:])}
    shorthand = SHORTHANDS.get(first)
    if shorthand is not None:
        return shorthand.request(rest)
    return {"op": first, **parse_fields(rest)}  # an op the server may know; it answers if not


def split_line(line: str) -> list[str]:
    """An interactive line's words: split at spaces outside JSON strings, objects and arrays,
    so `range={"from": 20260501, "to": 20260531}` stays one word, quotes and all."""
    words: list[str] = []
    current: list[str] = []
    depth, in_string, escaped = 0, False, False
    for char in line:
        if escaped:
            escaped = False
        elif in_string:
            escaped = char == "\\"
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth = max(0, depth - 1)
        elif char.isspace() and depth == 0:
            if current:
                words.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        words.append("".join(current))
    return words


def pretty(answer: Answer) -> str:
    response = answer.response
    text = (
        response
        if isinstance(response, str)
        else json.dumps(response, indent=2, ensure_ascii=False)
    )
    if answer.idempotent:
        text += "\n(idempotent: the first answer to this key, replayed)"
    return text


def show(answer: Answer, *, raw: bool) -> Exit:
    """Print one answer; the exit code it means."""
    if raw:
        print(answer.line)
    elif answer.success:
        print(pretty(answer))
    else:
        print(f"error: {answer.error_code}: {answer.response}", file=sys.stderr)
    return Exit.OK if answer.success else Exit.REFUSED


def run_once(session: Session, words: Sequence[str], *, raw: bool) -> Exit:
    try:
        request = parse_command(words)
    except UsageError as exc:
        print(f"karma-trio cli: {exc}", file=sys.stderr)
        return Exit.USAGE
    try:
        return show(session.request(request), raw=raw)
    except UnreachableError as exc:
        print(f"karma-trio cli: cannot reach {exc}", file=sys.stderr)
        return Exit.UNREACHABLE


def interactive(session: Session, *, raw: bool) -> Exit:
    """A prompt on a terminal; on a pipe, one command per line and the worst exit code."""
    on_terminal = sys.stdin.isatty()
    history = history_path() if on_terminal else None
    if history is not None:
        completion.enable(history, SHORTHANDS)
    prompt = f"karma {session.address}> " if on_terminal else ""
    worst = Exit.OK
    try:
        while True:
            try:
                line = input(prompt).strip()
            except EOFError:
                break
            except KeyboardInterrupt:
                print()
                continue
            if not line or line.startswith("#"):
                continue
            if line in ("quit", "exit"):
                break
            words = [line] if line.startswith(RAW_JSON) else split_line(line)
            if words[0] == "help":
                print(completion.help_text(words[1:], SHORTHANDS))
                continue
            worst = max(worst, run_once(session, words, raw=raw))
    finally:
        if history is not None:
            completion.save(history)
    return Exit.OK if on_terminal else worst


def history_path() -> Path:
    return Path(os.environ.get(HISTORY_ENV) or DEFAULT_HISTORY).expanduser()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="karma-trio cli",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one command to a karma-trio server, or without a command open an"
        " interactive prompt\n(history in $KARMA_CLI_HISTORY or ~/.karma_trio_history, Tab"
        " completes op names, `help` lists commands).",
        epilog="\n".join(
            ["commands:"]
            + [f"  {shorthand.usage}" for shorthand in SHORTHANDS.values()]
            + [
                "  call OP [field=value ...]     or just: OP [field=value ...]",
                '  \'{"op": "tree.list"}\'         a raw request ("v": 2 is added)',
                "values are JSON when they parse as JSON (key=42), else strings (series=api).",
                "",
                "exit codes: 0 ok; 1 the server answered an error (its error_code is printed);",
                "2 usage error (nothing sent); 3 cannot connect, or no answer in time.",
            ]
        ),
    )
    parser.add_argument(
        "--url",
        help="karma://[token@]host:port, or a cluster: karma+etcd://[token@]HOST:PORT[,…]/CLUSTER"
        " or karma+seeds://[token@]HOST:PORT[,…] (default: $KARMA_URL, else"
        " karma://127.0.0.1:8080)",
    )
    parser.add_argument("--json", action="store_true", help="print answers as the server sent them")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="a command (see below)")
    args = parser.parse_args(argv)
    try:
        args.address = Address.from_url(args.url)
    except ValueError as exc:
        parser.error(f"--url / KARMA_URL: {exc}")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    with Session(args.address, args.timeout) as session:
        if args.command:
            return run_once(session, args.command, raw=args.json)
        return interactive(session, raw=args.json)
