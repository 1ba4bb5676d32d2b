"""Regenerate docs/reference/{configuration,ops,errors}.md from the tables in the code.

Tests fail when a page and its table disagree; run `make docs` after changing a table.
"""

from __future__ import annotations

from pathlib import Path

from karma import config_cli
from karma.errors import ERROR_MEANINGS
from karma.protocol import optable

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference"

CONFIG_INTRO = """# Configuration reference

Every option can be given on the command line (`--option=value` or `--option value`) or through
its environment variable. The command line wins. Booleans are `true`/`false`; timeouts are in
seconds unless the name ends in `-ms`/`-us`. A bad value stops the server before it starts, with
exit status 2 and one line naming the option.

This table is generated from `karma/config.py` (`OPTIONS`); a test keeps the two identical.

"""

OPS_INTRO = """# Operations reference

Every op of protocol v2 that karma-trio accepts. *Access* decides who may run it: a read-only
token (`--read-auth-token`) and a slave run only `read` ops; `write` ops change the store and are
logged to the WAL; `admin` ops act on files or server counters. The internal name is karma 1.0's
and appears in `forbidden` messages. Generated from `karma/protocol/optable.py`.

| op (aliases) | internal name | access | idempotency key |
|---|---|---|---|
"""

ERRORS_INTRO = """# Error codes

Every error answer is
`{"protocol_version":2,"success":false,"response":"<message>","error_code":"<code>"}`
(a `moved` answer also carries a `moved` object before `error_code`: docs/cluster.md).
The codes are stable; messages for validation errors are karma 1.0's. Generated from
`karma/errors.py`.

| code | meaning |
|---|---|
"""


def ops_rows() -> str:
    rows = []
    for spec in optable.SPECS:
        first, *aliases = spec.tags
        name = f"`{first}`" + (" (" + ", ".join(f"`{t}`" for t in aliases) + ")" if aliases else "")
        key = "yes" if spec.idempotent else ""
        access = "WAL entry only (refused from clients)" if spec.internal else spec.access.value
        rows.append(f"| {name} | {spec.internal_name} | {access} | {key} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    (DOCS / "configuration.md").write_text(CONFIG_INTRO + config_cli.reference_markdown())
    (DOCS / "ops.md").write_text(OPS_INTRO + ops_rows())
    errors = "\n".join(f"| `{code}` | {text} |" for code, text in ERROR_MEANINGS.items())
    (DOCS / "errors.md").write_text(ERRORS_INTRO + errors + "\n")


if __name__ == "__main__":
    main()
