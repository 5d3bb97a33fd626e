"""The commands behind ``tandem``'s parser (``tandem.cli``): each takes the parsed
arguments, calls the tiers' typed functions and returns the exit code. Each imports only
what it runs, so building the parser imports no tier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import TandemError

if TYPE_CHECKING:
    from shared.spec import RunSpec


def _spec(args: argparse.Namespace) -> RunSpec:
    """The run spec of ``args.spec``, under ``--run-id`` when one is given."""
    from shared.spec import load_spec

    spec = load_spec(args.spec)
    if args.run_id:
        spec = spec.model_copy(update={"run_id": args.run_id})
    return spec


def generate(args: argparse.Namespace) -> int:
    from gpu_worker.job import run_generation

    result = run_generation(
        _spec(args),
        args.store,
        local=True if args.local else None,
        workers=args.workers,
        data_dir=args.data_dir,
        progress=not args.quiet,
        ray_resource=args.ray_resource,
    )
    print(
        f"run {result.run_id}: {_job_line(result)}; {result.shards_skipped} shard(s) already done"
    )
    return 0


def profile(args: argparse.Namespace) -> int:
    from gpu_worker.profile import run_profile

    record = run_profile(
        _spec(args),
        args.store,
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        requests=args.requests,
    )
    worker = record.worker
    print(
        f"run {record.run_id}: {worker.backend} {worker.precision} on {worker.device} "
        f"({worker.device_name or 'unknown device'})"
    )
    for row in record.latency:
        print(
            f"  latency, batch 1, {row.measured_prompt_tokens} prompt + {row.new_tokens} new "
            f"tokens: mean {row.mean_seconds:.4f} s, p50 {row.p50_seconds:.4f} s, "
            f"p95 {row.p95_seconds:.4f} s ({row.repeats} repeats)"
        )
    if record.throughput is not None:
        t = record.throughput
        rate = f"{t.tokens_per_second:.1f} tokens/s" if t.tokens_per_second else "-"
        print(f"  throughput, {t.requests} requests at batch {t.batch_size}: {rate}")
    if record.peak_rss_bytes:
        print(f"  peak RSS {record.peak_rss_bytes / 2**30:.2f} GiB", end="")
        if record.cuda_max_allocated_bytes:
            print(f", peak CUDA {record.cuda_max_allocated_bytes / 2**30:.2f} GiB", end="")
        print()
    print(f"stored as runs/{record.run_id}/profile.json")
    return 0


def _job_line(result) -> str:  # type: ignore[no-untyped-def]
    """What ran, in the units that describe it: text tokens/s for generation (EOS
    apart), requests/s and scored tokens/s for log-likelihood tasks."""
    seconds = result.seconds
    parts = [f"{result.shards_done} shard(s), {result.samples} samples in {seconds:.1f} s"]
    if result.generated_tokens or result.eos_tokens:
        rate = result.generated_tokens / seconds if seconds else 0.0
        parts.append(
            f"{result.generated_tokens} new text tokens (+{result.eos_tokens} EOS), "
            f"{rate:.1f} tokens/s"
        )
    if result.requests:
        requests_rate = result.requests / seconds if seconds else 0.0
        tokens_rate = result.scored_tokens / seconds if seconds else 0.0
        parts.append(
            f"{result.requests} log-likelihood requests ({requests_rate:.1f}/s), "
            f"{result.scored_tokens} tokens scored ({tokens_rate:.0f}/s)"
        )
    return "; ".join(parts)


def score(args: argparse.Namespace) -> int:
    from cpu_scorer.aggregations import AggregateOptions
    from cpu_scorer.scoring import score_once
    from shared.store import Store

    store = Store(args.store)
    store.check(writable=True)
    _unsafe_code_notice(args.confirm_run_unsafe_code)
    if args.ray:
        return _score_on_ray(args, store)
    if args.address:
        raise TandemError("--address is the Ray cluster's: use it with --ray")
    tallies = score_once(
        store,
        args.run,
        AggregateOptions(irt_params=args.irt_params),
        progress=not args.quiet,
        confirm_unsafe_code=args.confirm_run_unsafe_code,
    )
    failed = 0
    for run_id, tally in tallies.items():
        print(
            f"run {run_id}: scored {tally.scored} shard(s), quarantined {tally.quarantined}"
            + (f", failed {tally.failed}" if tally.failed else "")
            + (
                f", {tally.unconfirmed} code shard(s) not run (add --confirm-run-unsafe-code)"
                if tally.unconfirmed
                else ""
            )
        )
        failed += tally.failed + tally.unconfirmed
        _print_run_summary(store, run_id)
    if not tallies:
        print(f"no runs in {store.uri}")
    # 0: nothing left pending (bad shards are quarantined, which is an outcome); 1: some
    # shards stay unscored (the scorer failed on them, or code tasks were not allowed to
    # run their programs).
    return 1 if failed else 0


def _print_run_summary(store, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """A scored run's summary table, or on stderr why it cannot be read."""
    from cpu_scorer.report import print_summary

    try:
        summary = store.summary(run_id)
    except TandemError as error:
        print(f"run {run_id}: {error}", file=sys.stderr)
        return
    if summary is not None:
        print_summary(summary)


def _score_on_ray(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    from tandem.ray_score import score_on_ray

    result = score_on_ray(
        store,
        address=args.address,
        run_id=args.run,
        irt_params=args.irt_params,
        confirm_unsafe_code=args.confirm_run_unsafe_code,
        shards_per_task=args.shards_per_task,
        progress=not args.quiet,
    )
    print(
        f"ray: {result.shards} shard(s) in {result.tasks} task(s) on the cluster, "
        f"{result.seconds:.1f} s"
    )
    failed = 0
    for run_id, outcome in result.runs.items():
        closing = outcome.closing
        # Shards the cluster left pending (a task that kept failing on a store error, a
        # node whose run.json went bad): the closing pass tried them again.
        on_cluster = outcome.tasks["failed"]
        print(
            f"run {run_id}: scored {outcome.scored} shard(s), quarantined {outcome.quarantined}"
            + (
                f" ({closing.scored + closing.quarantined} after the job)"
                if closing.scored or closing.quarantined
                else ""
            )
            + (f", failed on the cluster {on_cluster} (tried again after it)" if on_cluster else "")
            + (f", failed {closing.failed}" if closing.failed else "")
            + (
                f", {closing.unconfirmed} code shard(s) not run (add --confirm-run-unsafe-code)"
                if closing.unconfirmed
                else ""
            )
        )
        failed += closing.failed + closing.unconfirmed
        _print_run_summary(store, run_id)
    if not result.runs:
        print(f"no runs in {store.uri}")
    return 1 if failed else 0


def _unsafe_code_notice(confirmed: bool) -> None:
    """Said once, when the user lets model-written programs run."""
    if confirmed:
        from cpu_scorer import sandbox

        print(f"tandem: {sandbox.UNSAFE_CODE_WARNING}", file=sys.stderr)


def runs(args: argparse.Namespace) -> int:
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


def ifeval(args: argparse.Namespace) -> int:
    from cpu_scorer.ifeval import _command

    return _command.run(
        input_data=args.input_data,
        responses=args.responses,
        output=args.output,
        summary=args.summary,
        workers=args.workers,
    )


def scorer(args: argparse.Namespace) -> int:
    from cpu_scorer.daemon import DaemonConfig, watch
    from shared.store import Store

    store = Store(args.store)
    store.check(writable=True)
    _unsafe_code_notice(args.confirm_run_unsafe_code)
    config = DaemonConfig(
        interval=args.interval,
        lease=args.lease,
        once=args.once,
        irt_params=args.irt_params,
        confirm_unsafe_code=args.confirm_run_unsafe_code,
    )
    watch(store, config)
    return 0


def serve(args: argparse.Namespace) -> int:
    from cpu_scorer.api import serve

    return serve(args.store, host=args.host, port=args.port, token=args.token)


def compare(args: argparse.Namespace) -> int:
    from cpu_scorer.compare import main

    return main(args.store, args.a, args.b, args.task, as_json=args.json)


def report(args: argparse.Namespace) -> int:
    from cpu_scorer.report import main

    return main(args.store, args.runs, fmt=args.format)


def export_wandb(args: argparse.Namespace) -> int:
    from cpu_scorer.wandb_export import export_wandb
    from shared.store import Store

    store = Store(args.store)
    store.check(writable=False)
    done = export_wandb(
        store,
        args.runs,
        project=args.project,
        entity=args.entity,
        step_from=args.step_from,
        max_samples=args.max_samples,
    )
    for run in done:
        print(f"W&B run {run['name']}: {', '.join(run['runs'])} ({run['dir']})")
    return 0


def sweep(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from shared.spec import load_spec_fields
    from tandem.sweep import SweepOptions, parse_budget, run_sweep

    logging.basicConfig(level=os.environ.get("TANDEM_LOG_LEVEL", "INFO"), format="%(message)s")
    options = SweepOptions(
        checkpoints=Path(args.checkpoints),
        store=args.store,
        name=args.name or Path(args.checkpoints).resolve().name,
        budget_seconds=parse_budget(args.budget),
        base=load_spec_fields(args.spec) if args.spec else {},
        every=args.every,
        watch=args.watch,
        settle=args.settle,
        poll=args.poll,
        tokenizer=args.tokenizer,
        heldout=args.heldout,
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    record = run_sweep(options, stop)
    for step in record.steps:
        note = " (over budget)" if step.over_budget else ""
        print(f"step {step.step}: {step.status} {step.run_id} {step.seconds or ''}s{note}")
    print(f"caps: {record.caps}")
    return 1 if any(s.status == "failed" for s in record.steps) else 0


def export_checkpoint(args: argparse.Namespace) -> int:
    from gpu_worker.export import export_checkpoint

    target = export_checkpoint(args.state_dict, args.config, args.tokenizer, args.out)
    print(f"exported {args.state_dict} to {target}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from tandem.demo import run_demo

    return run_demo(
        Path(args.store), Path(args.data_dir) if args.data_dir else None, use_ray=not args.no_ray
    )


def lm_eval(argv: list[str]) -> int:
    try:
        from tandem.lm_eval import run_cli
    except ImportError as error:
        raise TandemError(
            f"tandem lm-eval needs lm-evaluation-harness: pip install 'tandem-eval[lmeval]' "
            f"({error})"
        ) from error
    return run_cli(argv)
