"""The command line: ``python -m bankcourse COMMAND``.

Each stage module that offers commands defines ``register_cli(subparsers)``, which
adds its sub-commands with ``set_defaults(func=...)``; ``func(args)`` returns the exit
code. This file only gathers them, so a stage's options live beside its code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules asked for commands, in the order --help lists them.
COMMAND_MODULES = (
    "bankcourse.generator",
    "bankcourse.file_mode",
    "bankcourse.broker",
    "bankcourse.kafka_mode",
    "bankcourse.spark_mode",
    "bankcourse.doctor",
    "bankcourse.bench",
    "bankcourse.student",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every stage's sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m bankcourse",
        description="Real-time banking fraud detection: data, rules and the three stages.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v for DEBUG as well as INFO")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
