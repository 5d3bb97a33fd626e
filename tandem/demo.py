"""``tandem demo``: the production path end to end on the embedded model, on one box.

Starts a private Ray head on 127.0.0.1, submits generation with ``ray job submit``
(exactly what a user runs against a cluster), scores the shards with the CPU scorer,
prints the score table and stops Ray. Running it again reuses the model cache and
every finished shard.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from shared.errors import TandemError

REPO = Path(__file__).resolve().parents[1]
DEMO_SPEC = """\
# The demo run: the embedded SmolLM2-135M-Instruct on small IFEval + tinyMMLU subsets.
run_id = "demo-smollm2-135m"
tasks = ["ifeval", "tinymmlu"]
limit = {{ ifeval = {ifeval}, tinymmlu = {tinymmlu} }}
precision = "fp32"
shard_size = 16

[generation]
max_new_tokens = {max_new_tokens}
"""


def default_data_dir() -> Path:
    return (REPO / ".." / "shared" / "data").resolve()


def check_data(data_dir: Path) -> None:
    needed = [
        data_dir / "ifeval" / "input_data.jsonl",
        data_dir / "tinymmlu" / "tinyMMLU_test.jsonl",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise TandemError(
            "the demo needs the IFEval and tinyMMLU files: missing "
            + ", ".join(missing)
            + ". Pass --data-dir pointing at a folder with ifeval/input_data.jsonl and "
            "tinymmlu/tinyMMLU_test.jsonl (the layout of ../shared/data)"
        )


def run_demo(store: Path, data_dir: Path | None = None, use_ray: bool = True) -> int:
    """Generate through a private Ray head (or in-process without ``use_ray``), score,
    print the score table."""
    started = time.perf_counter()
    data_dir = data_dir.resolve() if data_dir else default_data_dir()
    check_data(data_dir)
    store = store.resolve()
    store.mkdir(parents=True, exist_ok=True)
    spec_path = store / "demo.toml"
    spec_path.write_text(DEMO_SPEC.format(ifeval=20, tinymmlu=40, max_new_tokens=256))
    tandem_bin = str(Path(sys.executable).with_name("tandem"))
    entrypoint = [
        tandem_bin,
        "generate",
        str(spec_path),
        "--store",
        str(store),
        "--data-dir",
        str(data_dir),
    ]
    if not use_ray:
        import subprocess

        code = subprocess.run([*entrypoint, "--local"]).returncode
    else:
        from gpu_worker.ray_local import local_ray_head, submit_job

        print("demo: starting a Ray head on 127.0.0.1 ...", file=sys.stderr)
        with local_ray_head(num_cpus=None) as head:
            print(
                f"demo: ray job submit --address {head.dashboard_url} -- tandem generate ...",
                file=sys.stderr,
            )
            code = submit_job(head, entrypoint)
        print("demo: Ray stopped", file=sys.stderr)
    if code != 0:
        raise TandemError(f"the generation job failed (exit {code}); see its log above")

    from cpu_scorer.report import print_summary
    from cpu_scorer.scoring import score_store
    from shared.store import Store

    run_store = Store(store)
    score_store(run_store, "demo-smollm2-135m", progress=True)
    summary = run_store.summary("demo-smollm2-135m")
    print()
    if summary is not None:
        print_summary(summary)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; store: {store}")
    return 0
