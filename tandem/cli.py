"""``tandem``: generate, score, inspect and serve evaluation runs.

The CLI owns argv: it parses and checks every argument here, then hands the parsed
arguments to the command's function in ``tandem._commands``, which calls the tiers'
typed functions. Each command imports only what it runs, so ``tandem --help`` imports
no tier at all.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from shared.errors import TandemError
from tandem import _commands

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


def _unsafe_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--confirm-run-unsafe-code",
        action="store_true",
        help="score code tasks (humaneval, mbpp) by running the model's programs in a "
        "sandbox; without it their shards stay unscored",
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

    gen = command("generate", _commands.generate, "Generate (or resume) a run from a spec file.")
    gen.add_argument("spec", help="run spec (TOML or YAML)")
    store_arg(gen)
    gen.add_argument("--local", action="store_true", help="run in this process, without Ray")
    gen.add_argument(
        "--workers",
        type=_positive,
        help="number of Ray actors (default: one per GPU, or per unit of --ray-resource, "
        "or 1 on CPU)",
    )
    gen.add_argument(
        "--ray-resource",
        metavar="NAME",
        help="on Ray, each actor asks for one unit of this custom resource instead of a "
        "GPU (nodes declare it: ray start --resources '{\"NAME\": 1}')",
    )
    gen.add_argument(
        "--data-dir",
        help="local task data (e.g. ../shared/data); default: the spec's, else the HF hub",
    )
    gen.add_argument("--run-id", help="override the spec's run_id")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    profile = command(
        "profile",
        _commands.profile,
        "Measure the spec's model here: latency at batch 1 (128 and 512 prompt tokens), "
        "throughput at its batch size, peak memory; stored as the run's profile.json.",
    )
    profile.add_argument("spec", help="run spec (TOML or YAML)")
    store_arg(profile)
    profile.add_argument("--run-id", help="override the spec's run_id")
    profile.add_argument(
        "--new-tokens", type=_positive, default=32, help="tokens generated per request"
    )
    profile.add_argument("--warmup", type=_positive, default=2, help="requests not counted")
    profile.add_argument("--repeats", type=_positive, default=10, help="requests measured")
    profile.add_argument(
        "--requests",
        type=_positive,
        help="requests in the throughput test (default: the spec's batch size, or 64)",
    )

    score = command(
        "score",
        _commands.score,
        "Score every unscored shard once (the scorer daemon's run-once mode), then print "
        "the summary. Exit 0 when nothing is left pending, 1 if shards stay unscored.",
    )
    store_arg(score)
    score.add_argument("--run", help="only this run id")
    score.add_argument("--irt-params", help="tinyBenchmarks.pkl for tinyMMLU IRT/p-IRT/gp-IRT")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    _unsafe_code_argument(score)
    score.add_argument(
        "--ray",
        action="store_true",
        help="score as a Ray Data job on a Ray cluster's CPU nodes (one CPU per task, no "
        "GPU; a lost node's tasks are retried); same score shards, quarantine and "
        "summaries as without it. Every node needs tandem installed and the store at the "
        "same URI (object store or shared path). Pays off with more cores than one "
        "machine has (docs/serving.md)",
    )
    score.add_argument(
        "--address",
        default=None,
        help="with --ray: the cluster's GCS address, host:port (default: $RAY_ADDRESS, "
        "which `ray job submit` sets)",
    )
    score.add_argument(
        "--shards-per-task",
        type=_positive,
        default=8,
        metavar="N",
        help="with --ray: shards each Ray task scores (default 8)",
    )

    runs = command("runs", _commands.runs, "List the runs in a store.")
    store_arg(runs)
    runs.add_argument("--json", action="store_true", help="print run ids as JSON")

    ifeval = command(
        "ifeval",
        _commands.ifeval,
        "Score IFEval responses from any system (Google's JSONL format).",
    )
    add_ifeval_arguments(ifeval)

    scorer = command(
        "scorer", _commands.scorer, "Run the scorer daemon: watch a store, score new shards."
    )
    store_arg(scorer)
    scorer.add_argument(
        "--interval", type=_seconds, default=1.0, help="poll interval in seconds (> 0)"
    )
    scorer.add_argument("--lease", type=_seconds, default=300.0, help="claim lease in seconds")
    scorer.add_argument("--once", action="store_true", help="score what is pending, then exit")
    scorer.add_argument("--irt-params", help="tinyBenchmarks.pkl for tinyMMLU IRT estimates")
    _unsafe_code_argument(scorer)

    serve = command("serve", _commands.serve, "Serve results over HTTP (FastAPI).")
    store_arg(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="1..65535 (default 8000)")
    serve.add_argument(
        "--token",
        default=os.environ.get("TANDEM_TOKEN"),
        help="bearer token (required when binding to a non-loopback address)",
    )

    compare = command(
        "compare",
        _commands.compare,
        "Which prompts flipped between two runs, and paired tests (bootstrap interval, "
        "McNemar) per task.",
    )
    compare.add_argument("a")
    compare.add_argument("b")
    store_arg(compare)
    compare.add_argument(
        "--task",
        help="the task whose flips to list (default: ifeval if both runs have it, else the "
        "first task they share); the paired tests cover every shared task",
    )
    compare.add_argument("--json", action="store_true")

    report = command(
        "report",
        _commands.report,
        "A run's summary (config, scores with stderr, telemetry, profile, reproducibility); "
        "for several runs a side-by-side table with paired tests against the first.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN")
    store_arg(report)
    report.add_argument("--format", choices=("md", "json"), default="md")

    # ``tandem export wandb RUN...`` and ``tandem export checkpoint STATE_DICT ...``; the
    # older ``tandem export STATE_DICT ...`` still means the latter (see main()).
    export = command("export", _commands.export_checkpoint, "Export runs to W&B, or a checkpoint.")
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    checkpoint = targets.add_parser(
        "checkpoint",
        help="a raw state_dict + config as a Hugging Face Llama folder (strict key check)",
        description="Turn a raw state_dict + config into a Hugging Face Llama folder "
        "(strict key check).",
    )
    checkpoint.set_defaults(handler=_commands.export_checkpoint)
    checkpoint.add_argument("state_dict", help="the weights (.safetensors, .pt, .pth, .bin)")
    checkpoint.add_argument("--config", required=True, help="checkpoint config (TOML or JSON)")
    checkpoint.add_argument("--tokenizer", required=True, help="the training tokenizer's folder")
    checkpoint.add_argument("--out", required=True, help="the folder to write")
    wandb = targets.add_parser(
        "wandb",
        help="Weights & Biases (needs the wandb extra; WANDB_MODE=offline works offline)",
        description="Metrics, per-instruction and breakdown tables and a samples table per "
        "task to Weights & Biases, one W&B run per tandem run (or per sweep).",
    )
    wandb.set_defaults(handler=_commands.export_wandb)
    wandb.add_argument("runs", nargs="+", metavar="RUN")
    store_arg(wandb)
    wandb.add_argument("--project", default="tandem", help="W&B project (default: tandem)")
    wandb.add_argument("--entity", help="W&B entity (default: yours)")
    wandb.add_argument(
        "--step-from",
        choices=("sweep",),
        help="one W&B run per sweep, each tandem run logged at its spec's step",
    )
    wandb.add_argument(
        "--max-samples",
        type=_positive,
        default=1000,
        help="rows per task in the samples table (default 1000)",
    )
    sweep = command(
        "sweep",
        _commands.sweep,
        "Evaluate a training run's checkpoints (step_N/ folders) in step order, in a time "
        "budget per checkpoint, with caps fixed on the first one.",
    )
    sweep.add_argument("--checkpoints", required=True, help="folder of step_<N>/ checkpoints")
    store_arg(sweep)
    sweep.add_argument("--budget", default="5m", help="time per checkpoint (300, 90s, 5m, 1h)")
    sweep.add_argument("--every", type=_positive, help="only steps that are multiples of N")
    sweep.add_argument("--watch", action="store_true", help="keep taking new checkpoints")
    sweep.add_argument("--name", help="the sweep's name (default: the checkpoints folder's)")
    sweep.add_argument("--spec", help="a run spec with tasks, limits (pinned caps), settings")
    sweep.add_argument("--tokenizer", help="the training tokenizer, for raw state_dict checkpoints")
    sweep.add_argument("--heldout", help="a held-out text file: its perplexity joins the tasks")
    sweep.add_argument("--data-dir", help="task data (e.g. ../shared/data)")
    sweep.add_argument(
        "--settle",
        type=_seconds,
        default=30.0,
        help="a checkpoint without a DONE marker is taken once unchanged this long (s)",
    )
    sweep.add_argument("--poll", type=_seconds, default=30.0, help="--watch: look this often (s)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = command(
        "demo", _commands.demo, "End-to-end demo on the embedded model through a local Ray head."
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


_EXPORT_TARGETS = ("wandb", "checkpoint", "-h", "--help")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "export" and argv[1] not in _EXPORT_TARGETS:
        argv.insert(1, "checkpoint")  # ``tandem export model.pt ...`` as before
    try:
        if argv[:1] == ["lm-eval"]:
            # Everything after it is lm-eval's: argparse here would try to read it.
            return _commands.lm_eval(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.handler(args) or 0)
    except TandemError as error:
        print(f"tandem: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        return 130
