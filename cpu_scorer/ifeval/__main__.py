"""``python -m cpu_scorer.ifeval``: the ``tandem ifeval`` command without the tandem CLI."""

from __future__ import annotations

import argparse
import sys

from cpu_scorer.ifeval import _command
from shared.errors import TandemError


def main(argv: list[str] | None = None) -> int:
    from tandem.cli import add_ifeval_arguments  # the argument definitions live there

    parser = argparse.ArgumentParser(
        prog="python -m cpu_scorer.ifeval",
        description="Score IFEval responses from any system (Google's JSONL format).",
    )
    add_ifeval_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _command.run(
            input_data=args.input_data,
            responses=args.responses,
            output=args.output,
            summary=args.summary,
            workers=args.workers,
        )
    except TandemError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
