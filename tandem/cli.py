"""``tandem``: generate, score, inspect and serve evaluation runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from shared.errors import TandemError

DEFAULT_STORE = os.environ.get("TANDEM_STORE", "./store")


def _cmd_generate(args: argparse.Namespace) -> int:
    from gpu_worker.job import run_generation
    from shared.spec import load_spec

    spec = load_spec(args.spec)
    if args.run_id:
        spec = spec.model_copy(update={"run_id": args.run_id})
    result = run_generation(
        spec,
        args.store,
        local=True if args.local else None,
        workers=args.workers,
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    rate = result.generated_tokens / result.seconds if result.seconds else 0.0
    print(
        f"run {result.run_id}: generated {result.shards_done} shard(s) "
        f"({result.samples} samples, {result.generated_tokens} new tokens, "
        f"{result.seconds:.1f} s, {rate:.1f} tokens/s); {result.shards_skipped} already done"
    )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from cpu_scorer.report import print_summary
    from cpu_scorer.scoring import SummaryOptions, score_store
    from shared.store import Store

    store = Store(args.store)
    counts = score_store(
        store, args.run, SummaryOptions(irt_params=args.irt_params), progress=not args.quiet
    )
    for run_id, tally in counts.items():
        print(
            f"run {run_id}: scored {tally['scored']} shard(s), quarantined {tally['quarantined']}"
        )
        print_summary(store.read_json(store.run_path(run_id, "summary.json")))
    if not counts:
        print(f"no runs in {store.uri}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from shared.store import Store

    store = Store(args.store)
    runs = store.list_runs()
    if args.json:
        print(json.dumps(runs))
        return 0
    if not runs:
        print(f"no runs in {store.uri}")
    for run_id in runs:
        record = store.read_run(run_id)
        spec = record.get("spec", {})
        print(
            f"{run_id}\t{record.get('created_at', '')}\t{spec.get('model', '')}\t"
            f"{spec.get('precision', '')}\t{','.join(spec.get('tasks', []))}"
        )
    return 0


def _cmd_ifeval(args: argparse.Namespace) -> int:
    from cpu_scorer.ifeval import _command

    return _command.run(args)


def _add_ifeval(parser: argparse.ArgumentParser) -> None:
    try:
        from cpu_scorer.ifeval import _command
    except ImportError:  # the scorer extra is not installed
        return
    _command.add_arguments(parser)


def _cmd_scorer(args: argparse.Namespace) -> int:
    from cpu_scorer import daemon

    return daemon.run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from cpu_scorer import api

    return api.run(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from cpu_scorer import compare

    return compare.run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tandem import demo

    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Two-tier LLM evaluation: GPU workers generate, CPU scorers judge.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def store_arg(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--store",
            default=DEFAULT_STORE,
            help="run store: a local path or a pyarrow.fs URI such as s3://bucket/evals "
            "(default: $TANDEM_STORE or ./store)",
        )

    gen = command("generate", _cmd_generate, "Generate (or resume) a run from a spec file.")
    gen.add_argument("spec", help="run spec (TOML or YAML)")
    store_arg(gen)
    gen.add_argument("--local", action="store_true", help="run in this process, without Ray")
    gen.add_argument(
        "--workers", type=int, help="number of Ray actors (default: one per GPU, or 1 on CPU)"
    )
    gen.add_argument(
        "--data-dir",
        help="local task data (e.g. ../shared/data); default: the spec's, else the HF hub",
    )
    gen.add_argument("--run-id", help="override the spec's run_id")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    score = command("score", _cmd_score, "Score every unscored shard once, then print the summary.")
    store_arg(score)
    score.add_argument("--run", help="only this run id")
    score.add_argument("--irt-params", help="tinyBenchmarks.pkl for tinyMMLU IRT/p-IRT/gp-IRT")
    score.add_argument("--quiet", action="store_true", help="no progress bar")

    runs = command("runs", _cmd_runs, "List the runs in a store.")
    store_arg(runs)
    runs.add_argument("--json", action="store_true", help="print run ids as JSON")

    ifeval = command(
        "ifeval", _cmd_ifeval, "Score IFEval responses from any system (Google's JSONL format)."
    )
    _add_ifeval(ifeval)

    scorer = command(
        "scorer", _cmd_scorer, "Run the scorer daemon: watch a store, score new shards."
    )
    store_arg(scorer)
    scorer.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds")
    scorer.add_argument("--lease", type=float, default=300.0, help="claim lease in seconds")
    scorer.add_argument("--once", action="store_true", help="score what is pending, then exit")
    scorer.add_argument("--irt-params", help="tinyBenchmarks.pkl for tinyMMLU IRT estimates")

    serve = command("serve", _cmd_serve, "Serve results over HTTP (FastAPI).")
    store_arg(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--token",
        default=os.environ.get("TANDEM_TOKEN"),
        help="bearer token (required when binding to a non-loopback address)",
    )

    compare = command("compare", _cmd_compare, "Show which prompts flipped between two runs.")
    compare.add_argument("a")
    compare.add_argument("b")
    store_arg(compare)
    compare.add_argument("--task", default="ifeval")
    compare.add_argument("--json", action="store_true")

    demo = command(
        "demo", _cmd_demo, "End-to-end demo on the embedded model through a local Ray head."
    )
    demo.add_argument("--store", default="./demo-store", help="store for the demo run")
    demo.add_argument(
        "--data-dir", default=None, help="task data (default: ../shared/data beside the checkout)"
    )
    demo.add_argument("--no-ray", action="store_true", help="skip Ray; run generation in-process")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TandemError as error:
        print(f"tandem: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        return 130
