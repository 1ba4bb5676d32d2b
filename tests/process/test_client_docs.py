"""docs/client.md, run: every ```python block is a script that must run without raising.

Each block runs in a fresh namespace, as its own `__main__`, against one server started with
default options; `KARMA_URL` points at it, as the page tells readers to set it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Proc

pytestmark = pytest.mark.process
PAGE = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[int, str]]:
    """(line number, source) of each python block on the page."""
    text = PAGE.read_text()
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1)) for match in BLOCK.finditer(text)
    ]


BLOCKS = blocks()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    directory = tmp_path_factory.mktemp("docs") / "data"
    directory.mkdir()
    proc = Proc(directory, "--wal-fsync=false")
    proc.start()
    yield proc
    proc.close()


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line {n}" for n, _ in BLOCKS])
def test_a_documented_example_runs(
    server: Proc, monkeypatch: pytest.MonkeyPatch, line: int, source: str
) -> None:
    monkeypatch.setenv("KARMA_URL", f"karma://127.0.0.1:{server.port}")
    # padded so that a traceback names the page's own line numbers
    code = compile("\n" * (line - 1) + source, str(PAGE), "exec")
    exec(code, {"__name__": "__main__"})
