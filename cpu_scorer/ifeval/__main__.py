"""``python -m cpu_scorer.ifeval``: the ``tandem ifeval`` command without the tandem CLI."""

from __future__ import annotations

import argparse
import sys

from shared.errors import TandemError


def main(argv: list[str] | None = None) -> int:
    # The argument definitions and the command behind them live in the tandem CLI.
    from tandem._commands import ifeval
    from tandem.cli import add_ifeval_arguments

    parser = argparse.ArgumentParser(
        prog="python -m cpu_scorer.ifeval",
        description="Score IFEval responses from any system (Google's JSONL format).",
    )
    add_ifeval_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return ifeval(args)
    except TandemError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
