"""``tandem.evaluate``: evaluate the model a training loop holds, in its own process.

    import tandem
    metrics = tandem.evaluate(model, tokenizer, tasks=["piqa", "arc_easy"],
                              limit={"piqa": 200}, step=10_000, sweep="run-7",
                              store="./evals", data_dir="../shared/data")

No export and no second process: the live ``torch.nn.Module`` goes through the same
backend code as a loaded checkpoint (``gpu_worker.backends.hf`` over the model as it is:
its device, its dtype), the run is written to the store like any other (its record
carries the step and the sweep), scored by the same CPU scorer, and the per-task metrics
come back. The same weights give the same numbers as ``tandem generate`` + ``tandem
score`` on an exported checkpoint. The model's train/eval mode and every parameter's
``requires_grad`` are as they were when it returns; nothing is moved to another device.
"""

from __future__ import annotations

from typing import Any

from shared.errors import TandemError


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    tasks: list[str] | tuple[str, ...],
    store: str,
    limit: dict[str, int] | None = None,
    num_fewshot: dict[str, int] | None = None,
    step: int | None = None,
    sweep: str | None = None,
    run_id: str | None = None,
    model_id: str | None = None,
    data_dir: str | None = None,
    task_data: dict[str, str] | None = None,
    generation: dict[str, Any] | None = None,
    shard_size: int = 32,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Generate and score ``tasks`` for ``model`` now; returns per task its summary
    metrics (``summary.json``'s numbers). See the module docstring."""
    from cpu_scorer.scoring import score_once
    from gpu_worker.backends.hf import HFBackend, Loaded
    from gpu_worker.job import run_generation
    from shared.spec import parse_spec
    from shared.store import Store

    name = model_id or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "live")
    fields: dict[str, Any] = {
        "run_id": run_id or f"{sweep or 'live'}-step{step if step is not None else 0:09d}",
        "model": f"live:{name}",
        "tasks": list(tasks),
        "limit": dict(limit or {}),
        "num_fewshot": dict(num_fewshot or {}),
        "step": step,
        "sweep": sweep,
        "data_dir": data_dir,
        "task_data": dict(task_data or {}),
        "shard_size": shard_size,
    }
    if generation:
        fields["generation"] = generation
    spec = parse_spec(fields, "tandem.evaluate(...)")
    was_training = bool(model.training)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        backend = HFBackend(spec, Loaded(model, tokenizer, name))
        run_generation(spec, store, backend=backend, progress=progress)
    finally:
        model.train(was_training)
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    run = spec.resolved_run_id()
    handle = Store(store)
    score_once(handle, run, progress=progress)
    summary = handle.summary(run)
    if summary is None:
        raise TandemError(f"run {run}: no summary was written")
    return {
        task: {k: v for k, v in entry.metrics.items() if isinstance(v, (int, float))}
        for task, entry in summary.tasks.items()
    }
