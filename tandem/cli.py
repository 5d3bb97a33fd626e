"""``tandem``: generate, score, inspect and serve evaluation runs.

The CLI owns argv: it parses and checks every argument here, then calls the tiers'
typed functions. Each command imports only what it runs, so ``tandem --help`` imports
no tier at all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from shared.errors import TandemError

DEFAULT_STORE = os.environ.get("TANDEM_STORE", "./store")


# ---- argument types: refuse bad values with the allowed range --------------------------
def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive, finite number of seconds (e.g. 1 or 0.5), got {text!r}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---- commands --------------------------------------------------------------------------
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
    from cpu_scorer.aggregations import AggregateOptions
    from cpu_scorer.report import print_summary
    from cpu_scorer.scoring import score_once
    from shared.store import Store

    store = Store(args.store)
    store.check(writable=True)
    tallies = score_once(
        store, args.run, AggregateOptions(irt_params=args.irt_params), progress=not args.quiet
    )
    failed = 0
    for run_id, tally in tallies.items():
        print(
            f"run {run_id}: scored {tally.scored} shard(s), quarantined {tally.quarantined}"
            + (f", failed {tally.failed}" if tally.failed else "")
        )
        failed += tally.failed
        try:
            summary = store.summary(run_id)
        except TandemError as error:
            print(f"run {run_id}: {error}", file=sys.stderr)
            continue
        if summary is not None:
            print_summary(summary)
    if not tallies:
        print(f"no runs in {store.uri}")
    # 0: nothing left pending (bad shards are quarantined, which is an outcome); 1: the
    # scorer itself failed on some shard (they stay pending for a fixed scorer).
    return 1 if failed else 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from shared.store import Store

    store = Store(args.store)
    store.check(writable=False)
    runs = store.list_runs()
    if args.json:
        print(json.dumps(runs))
        return 0
    if not runs:
        print(f"no runs in {store.uri}")
    for run_id in runs:
        try:
            record = store.run_record(run_id)
        except TandemError as error:
            print(f"{run_id}\t(damaged: {error})")
            continue
        print(
            f"{run_id}\t{record.created_at}\t{record.spec.get('model', '')}\t"
            f"{record.resolved_precision}\t{','.join(record.spec.get('tasks') or record.tasks)}"
        )
    return 0


def _cmd_ifeval(args: argparse.Namespace) -> int:
    from cpu_scorer.ifeval import _command

    return _command.run(
        input_data=args.input_data,
        responses=args.responses,
        output=args.output,
        summary=args.summary,
        workers=args.workers,
    )


def _cmd_scorer(args: argparse.Namespace) -> int:
    from cpu_scorer.daemon import DaemonConfig, watch
    from shared.store import Store

    store = Store(args.store)
    store.check(writable=True)
    config = DaemonConfig(
        interval=args.interval, lease=args.lease, once=args.once, irt_params=args.irt_params
    )
    watch(store, config)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from cpu_scorer.api import serve

    return serve(args.store, host=args.host, port=args.port, token=args.token)


def _cmd_compare(args: argparse.Namespace) -> int:
    from cpu_scorer.compare import main

    return main(args.store, args.a, args.b, args.task, as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tandem.demo import run_demo

    return run_demo(
        Path(args.store), Path(args.data_dir) if args.data_dir else None, use_ray=not args.no_ray
    )


def _cmd_lm_eval(argv: list[str]) -> int:
    try:
        from tandem.lm_eval import run_cli
    except ImportError as error:
        raise TandemError(
            f"tandem lm-eval needs lm-evaluation-harness: pip install 'tandem-eval[lmeval]' "
            f"({error})"
        ) from error
    return run_cli(argv)


def add_ifeval_arguments(ifeval: argparse.ArgumentParser) -> None:
    """``tandem ifeval``'s arguments (also ``python -m cpu_scorer.ifeval``'s)."""
    ifeval.add_argument(
        "--input-data",
        required=True,
        type=Path,
        metavar="FILE",
        help="the prompts: JSONL with key, prompt, instruction_id_list, kwargs",
    )
    ifeval.add_argument(
        "--responses",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSONL with prompt and response per line (other fields are kept)",
    )
    ifeval.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSONL of verdicts, one line per response line",
    )
    ifeval.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="write the four metrics as JSON here instead of to stderr",
    )
    ifeval.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="processes to score with (default: every core, for large inputs)",
    )


# ---- the parser --------------------------------------------------------------------------
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
        "--workers",
        type=_positive,
        help="number of Ray actors (default: one per GPU, or 1 on CPU)",
    )
    gen.add_argument(
        "--data-dir",
        help="local task data (e.g. ../shared/data); default: the spec's, else the HF hub",
    )
    gen.add_argument("--run-id", help="override the spec's run_id")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    score = command(
        "score",
        _cmd_score,
        "Score every unscored shard once (the scorer daemon's run-once mode), then print "
        "the summary. Exit 0 when nothing is left pending, 1 if the scorer failed on a shard.",
    )
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
    add_ifeval_arguments(ifeval)

    scorer = command(
        "scorer", _cmd_scorer, "Run the scorer daemon: watch a store, score new shards."
    )
    store_arg(scorer)
    scorer.add_argument(
        "--interval", type=_seconds, default=1.0, help="poll interval in seconds (> 0)"
    )
    scorer.add_argument("--lease", type=_seconds, default=300.0, help="claim lease in seconds")
    scorer.add_argument("--once", action="store_true", help="score what is pending, then exit")
    scorer.add_argument("--irt-params", help="tinyBenchmarks.pkl for tinyMMLU IRT estimates")

    serve = command("serve", _cmd_serve, "Serve results over HTTP (FastAPI).")
    store_arg(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="1..65535 (default 8000)")
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

    # Never parsed here: main() hands everything after "lm-eval" to lm-eval's own CLI.
    command(
        "lm-eval",
        lambda args: 0,
        "lm-evaluation-harness's CLI with --model tandem registered; every argument is "
        "passed through (e.g. --model tandem --model_args backend=llamacpp,model=m.gguf "
        "--tasks task.yaml).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["lm-eval"]:
            # Everything after it is lm-eval's: argparse here would try to read it.
            return _cmd_lm_eval(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.handler(args) or 0)
    except TandemError as error:
        print(f"tandem: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        return 130
