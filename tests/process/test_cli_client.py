"""`karma-trio cli` against a real server: one-shot commands, exit codes by error class, and the
interactive prompt driven through a pseudo-terminal (completion, history)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Proc, free_port

pytestmark = pytest.mark.process
TOKEN = "cli-s3cret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    directory = tmp_path_factory.mktemp("cli") / "data"
    directory.mkdir()
    proc = Proc(directory, f"--auth-token={TOKEN}").start()
    yield proc
    proc.close()


def url(proc: Proc, token: str | None = TOKEN) -> str:
    return f"karma://{token + '@' if token else ''}127.0.0.1:{proc.port}"


def cli(*args: str, karma_url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KARMA_URL": karma_url}
    return subprocess.run(
        [sys.executable, "-m", "karma", "cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_one_shot_shorthands_write_and_read_a_counter(server: Proc) -> None:
    assert cli("increment", "cli_api", "42", "5", karma_url=url(server)).returncode == 0
    done = cli("sum", "cli_api", "42", karma_url=url(server))
    assert (done.returncode, done.stdout) == (0, "5\n")
    assert cli("ping", karma_url=url(server)).stdout == "pong\n"
    health = cli("health", karma_url=url(server))
    assert json.loads(health.stdout)["status"] == "ok"
    stats = cli("stats", karma_url=url(server))
    assert stats.returncode == 0
    assert "uptime_seconds" in json.loads(stats.stdout)


def test_generic_call_and_raw_json_reach_any_op(server: Proc) -> None:
    cli("increment", "cli_raw", "1", karma_url=url(server))
    done = cli("call", "tree.info", "series=cli_raw", karma_url=url(server))
    assert json.loads(done.stdout)["key_count"] == 1
    done = cli('{"op":"tree.list"}', karma_url=url(server))
    assert "cli_raw" in json.loads(done.stdout)


def test_json_prints_the_answer_line_as_the_server_sent_it(server: Proc) -> None:
    done = cli("--json", "ping", karma_url=url(server))
    assert (
        done.stdout == '{"protocol_version":2,"success":true,"response":"pong","error_code":null}\n'
    )


def test_url_flag_wins_over_the_environment(server: Proc) -> None:
    done = cli("--url", url(server), "ping", karma_url="karma://127.0.0.1:1")
    assert (done.returncode, done.stdout) == (0, "pong\n")


def test_an_error_answer_exits_1_naming_its_code(server: Proc) -> None:
    done = cli("call", "no.such_op", karma_url=url(server))
    assert done.returncode == 1
    assert done.stderr.startswith("error: unknown_command: ")
    done = cli("ping", karma_url=url(server, token=None))
    assert done.returncode == 1
    assert "unauthorized" in done.stderr
    done = cli("--json", "sum", "no_such_series", "1", karma_url=url(server))
    assert done.returncode == 1
    assert json.loads(done.stdout)["error_code"] == "not_found"


@pytest.mark.parametrize(
    "args",
    [("sum",), ("call",), ("{not json",), ("tree.info", "series"), ("--url", "http://x:1", "ping")],
    ids=["sum-without-args", "call-without-op", "bad-raw-json", "field-without-value", "bad-url"],
)
def test_usage_errors_exit_2_and_send_nothing(server: Proc, args: tuple[str, ...]) -> None:
    done = cli(*args, karma_url=url(server))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") <= 3  # a short message, no traceback
    assert "Traceback" not in done.stderr


def test_a_refused_connection_exits_3() -> None:
    done = cli("ping", karma_url=f"karma://127.0.0.1:{free_port()}")
    assert done.returncode == 3
    assert done.stderr.startswith("karma-trio cli: cannot reach 127.0.0.1:")
    assert done.stderr.count("\n") == 1


def test_a_server_that_never_answers_exits_3_after_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        done = cli("--timeout", "0.5", "ping", karma_url=f"karma://127.0.0.1:{port}")
    assert done.returncode == 3
    assert "no answer in time" in done.stderr
    assert time.monotonic() - started < 30


def test_commands_from_a_pipe_run_in_order_and_exit_with_the_worst_code(server: Proc) -> None:
    done = cli(karma_url=url(server), stdin="ping\n\n# a comment\nbogus.op\nsum cli_api 42\n")
    assert done.stdout == "pong\n5\n"
    assert "unknown_command" in done.stderr
    assert done.returncode == 1


class Terminal:
    """`karma-trio cli` on a pseudo-terminal: what a person at a prompt sees and types."""

    def __init__(self, karma_url: str, history: Path) -> None:
        self.master, slave = pty.openpty()
        env = {
            **os.environ,
            "KARMA_URL": karma_url,
            "KARMA_CLI_HISTORY": str(history),
            "TERM": "dumb",
            "INPUTRC": os.devnull,  # no personal key bindings
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "karma", "cli"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.screen = b""
        self._lock = threading.Lock()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_for(self, pattern: bytes, timeout: float = 30) -> bytes:
        """Read until `pattern` (a regex) appears in what was printed since the last match."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.screen):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.screen[-2000:]!r}"
            readable, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if readable:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the program exited: the terminal closed
                    assert re.search(pattern, self.screen), self.screen[-2000:]
        match = re.search(pattern, self.screen)
        assert match is not None
        seen, self.screen = self.screen[: match.end()], self.screen[match.end() :]
        return seen

    def exit_code(self) -> int:
        return self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def test_the_prompt_completes_op_names_runs_commands_and_keeps_history(
    server: Proc, tmp_path: Path
) -> None:
    history = tmp_path / "history"
    prompt = re.escape(f"karma 127.0.0.1:{server.port}> ".encode())
    terminal = Terminal(url(server), history)
    try:
        terminal.wait_for(prompt)
        terminal.type(b"coun\t\t")  # the first Tab completes "counter.", the second lists
        listing = terminal.wait_for(rb"counter\.sum")
        assert b"counter.batch_sum" in listing + terminal.wait_for(rb"counter\.batch_sum")
        terminal.type(b"\x15")  # Ctrl-U: clear the line
        terminal.type(b"increment cli_tty 9 4\r")
        terminal.wait_for(rb"\r\n4\r\n" + prompt)
        terminal.type(b'call counter.sum series="cli_tty" key=9\r')
        terminal.wait_for(rb"\r\n4\r\n" + prompt)
        terminal.type(b"call no.such_op\r")
        terminal.wait_for(rb"error: unknown_command: [^\r\n]*\r\n" + prompt)
        terminal.type(b"quit\r")
        assert terminal.exit_code() == 0
    finally:
        terminal.close()
    assert "increment cli_tty 9 4" in history.read_text()

    # the next session recalls it: four times Ctrl-P (previous line) from "quit" back
    again = Terminal(url(server), history)
    try:
        again.wait_for(prompt)
        again.type(b"\x10\x10\x10\x10\r")
        again.wait_for(rb"increment cli_tty 9 4 *[\x08]*\r\n4\r\n" + prompt)
        again.type(b"sum cli_tty 9\r")
        again.wait_for(rb"\r\n8\r\n" + prompt)  # the increment ran a second time
        again.type(b"\x04")  # Ctrl-D ends the session
        assert again.exit_code() == 0
    finally:
        again.close()
