"""The ``viocluster`` command line.

Each plane registers its own sub-commands; this module only dispatches them and turns a
:class:`~broker.errors.UserError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from broker import __version__
from broker.errors import UserError

# Modules that each expose ``register(subparsers)``; a sub-command sets ``func`` on its parser.
_COMMAND_MODULES = (
    "broker.simulator.cli",  # simulate
    "broker.simulator.sweep",  # sweep
    "broker.lab.cli",  # lab up / lab down
    "broker.service.cli",  # broker run, status, contracts
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viocluster",
        description="Machine brokers and tools for clusters that lend idle machines as COW VMs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a plane not built yet: leave its verbs out
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"viocluster: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("viocluster: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (head, less)
        sys.stderr.close()
        return 141


if __name__ == "__main__":
    sys.exit(main())
