"""`karma-trio print-unit [--env]`: the systemd unit shipped in the package, or its environment
file, so an installed wheel carries what the docs tell an operator to copy.

The files live in `karma/ops_data/` and nowhere else: the tests check that very copy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from typing import Final

UNIT: Final = "karma-trio.service"
ENVIRONMENT: Final = "karma-trio.env"


def read(name: str) -> str:
    return (resources.files("karma") / "ops_data" / name).read_text(encoding="utf-8")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="karma-trio print-unit",
        description="Print the systemd unit for karma-trio (install it as"
        " /etc/systemd/system/karma-trio.service), or with --env its environment file"
        " (/etc/default/karma-trio).",
    )
    parser.add_argument("--env", action="store_true", help="print the environment file instead")
    args = parser.parse_args(argv)
    sys.stdout.write(read(ENVIRONMENT if args.env else UNIT))
    return 0
