"""examples/llm_budget.py run as a user would run it, against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm_budget.py"
MONTH = {"calendar": "month"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--wal-fsync=false")
    proc.start()
    yield proc
    proc.close()


def run(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env={"KARMA_URL": f"karma://127.0.0.1:{port}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


def used_and_held(port: int, user: int, budget: int) -> tuple[int, int]:
    client = Client(port)
    try:
        answer = client.call(
            "limit.check", series="llm_tokens", key=user, value=0, max=budget, window=MONTH
        )
    finally:
        client.close()
    if answer["error_code"] == "not_found":
        return 0, 0  # nothing was ever charged
    return answer["response"]["used"], answer["response"]["held"]


def test_llm_budget_without_arguments_prints_its_usage_and_exits_2() -> None:
    done = run(1)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: llm_budget.py")
    assert "Traceback" not in done.stderr


def test_llm_budget_charges_the_tokens_a_call_used_not_its_reservation(server: Proc) -> None:
    prompt = "summarise the quarterly usage report for account forty two"  # 9 tokens
    done = run(server.port, "42", prompt, "--budget", "5000")
    assert done.returncode == 0, done.stderr
    reply, summary = done.stdout.splitlines()
    assert reply == " ".join(reversed(prompt.split()))
    # 9 tokens in, 9 out: the 521-token worst case was held, then 18 committed
    assert summary == "user 42: 18 of 5000 tokens used this month (4982 left)"
    assert used_and_held(server.port, 42, 5000) == (18, 0)
    again = run(server.port, "42", prompt, "--budget", "5000")
    assert again.stdout.splitlines()[1] == "user 42: 36 of 5000 tokens used this month (4964 left)"


def test_llm_budget_voids_the_hold_when_the_model_call_fails(server: Proc) -> None:
    done = run(server.port, "7", "hello there", "--fail")
    assert done.returncode == 4
    assert done.stderr == "user 7: the model did not answer; nothing was charged\n"
    assert used_and_held(server.port, 7, 50_000) == (0, 0)


def test_llm_budget_refuses_a_call_whose_worst_case_does_not_fit(server: Proc) -> None:
    assert run(server.port, "9", "a b c d e", "--budget", "600").returncode == 0  # 10 used
    done = run(server.port, "9", "a b c d e", "--budget", "520")  # 517 needed, 510 left
    assert done.returncode == 3
    assert done.stderr.startswith("user 9: over budget: 517 tokens needed, 510 of 520 left")
    assert used_and_held(server.port, 9, 520) == (10, 0)
