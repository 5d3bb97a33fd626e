"""Checkpoint sweeps: strict export of raw checkpoints, step order, fixed caps in a budget,
--watch, and the in-process API on a live model (same numbers as the CLI)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from shared.errors import TandemError

pytestmark = pytest.mark.slow

CONFIG = """\
vocab_size = 49152
hidden_size = 32
intermediate_size = 64
num_layers = 2
num_heads = 4
num_kv_heads = 2
rope_theta = 10000.0
context_length = 512
tie_embeddings = true
"""


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    from gpu_worker.models import embedded_model_dir

    return embedded_model_dir()  # SmolLM2's tokenizer: 49152 tokens


def write_checkpoint(folder: Path, step: int, config: str = CONFIG, marker: bool = True) -> Path:
    """A tiny random Llama at ``step`` as a raw checkpoint: state_dict + config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(step)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    )
    path = folder / f"step_{step}"
    path.mkdir(parents=True)
    torch.save(model.state_dict(), path / "model.pt")
    (path / "checkpoint.toml").write_text(config)
    if marker:
        (path / "DONE").write_text("")
    return path


def test_export_is_strict_and_lists_what_does_not_fit(tmp_path: Path, tokenizer_dir: Path) -> None:
    import torch

    from gpu_worker.export import export_checkpoint

    good = write_checkpoint(tmp_path / "ck", 100)
    out = export_checkpoint(
        good / "model.pt", good / "checkpoint.toml", tokenizer_dir, tmp_path / "hf"
    )
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    state = torch.load(good / "model.pt", weights_only=True)
    state["model.layers.0.self_attn.q_proj.weight_typo"] = state.pop(
        "model.layers.0.self_attn.q_proj.weight"
    )
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(TandemError) as caught:
        export_checkpoint(
            tmp_path / "renamed.pt", good / "checkpoint.toml", tokenizer_dir, tmp_path / "x"
        )
    text = str(caught.value)
    assert "unmatched keys (not in the model) (1):" in text and "q_proj.weight_typo" in text
    assert "missing keys (1):" in text and "model.layers.0.self_attn.q_proj.weight" in text
    assert not (tmp_path / "x").exists()  # nothing written

    # A rename map fixes the names.
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(CONFIG + '[rename]\n"weight_typo$" = "weight"\n')
    export_checkpoint(tmp_path / "renamed.pt", renamed, tokenizer_dir, tmp_path / "ok")

    heads = tmp_path / "heads.toml"
    heads.write_text(CONFIG.replace("num_heads = 4", "num_heads = 8"))
    with pytest.raises(TandemError, match=r"mis-shaped keys \(\d+\):") as caught:
        export_checkpoint(good / "model.pt", heads, tokenizer_dir, tmp_path / "y")
    assert "k_proj.weight: (16, 32) in the state_dict" in str(caught.value)

    small = tmp_path / "small.toml"
    small.write_text(CONFIG.replace("vocab_size = 49152", "vocab_size = 1000"))
    with pytest.raises(TandemError, match="49152 tokens, more than vocab_size 1000"):
        export_checkpoint(good / "model.pt", small, tokenizer_dir, tmp_path / "z")


def _options(tmp_path: Path, tokenizer_dir: Path, data_dir: Path, **extra):
    from tandem.sweep import SweepOptions

    values = dict(
        checkpoints=tmp_path / "ck",
        store=str(tmp_path / "store"),
        name="tiny",
        budget_seconds=8.0,
        base={"tasks": ["piqa", "arc_easy"]},
        every=1000,
        settle=0.3,
        poll=0.2,
        tokenizer=str(tokenizer_dir),
        data_dir=str(data_dir),
        progress=False,
    )
    values.update(extra)
    return SweepOptions(**values)


def test_a_sweep_evaluates_in_step_order_with_fixed_caps(
    tmp_path: Path, tokenizer_dir: Path, data_dir: Path
) -> None:
    from shared.store import Store
    from tandem.sweep import run_sweep

    for step in (3000, 1000, 2000, 2500):  # 2500 is not a multiple of --every
        write_checkpoint(tmp_path / "ck", step)
    record = run_sweep(_options(tmp_path, tokenizer_dir, data_dir))
    assert [s.step for s in record.steps] == [1000, 2000, 3000]
    assert all(s.status == "done" for s in record.steps)
    assert set(record.caps) == {"piqa", "arc_easy"} and record.seconds_per_item
    store = Store(tmp_path / "store")
    created = []
    for entry in record.steps:
        run = store.run_record(entry.run_id)
        assert run.spec["step"] == entry.step and run.spec["sweep"] == "tiny"
        assert run.spec["limit"] == record.caps  # the same items at every step
        created.append(run.created_at)
        assert store.summary(entry.run_id).tasks["piqa"].complete
    assert created == sorted(created)  # evaluated in step order
    assert store.sweep("tiny") == record
    # A second sweep skips what is done and keeps the caps.
    write_checkpoint(tmp_path / "ck", 4000)
    again = run_sweep(_options(tmp_path, tokenizer_dir, data_dir))
    assert [s.step for s in again.steps] == [1000, 2000, 3000, 4000]
    assert again.caps == record.caps
    assert store.run_record("tiny-step000004000").spec["limit"] == record.caps


def test_watch_takes_new_checkpoints_and_waits_for_unfinished_ones(
    tmp_path: Path, tokenizer_dir: Path, data_dir: Path
) -> None:
    from tandem.sweep import run_sweep

    write_checkpoint(tmp_path / "ck", 1000)
    stop = threading.Event()
    result: dict = {}
    options = _options(
        tmp_path, tokenizer_dir, data_dir, watch=True, base={"tasks": ["piqa"]}, settle=60.0
    )
    worker = threading.Thread(target=lambda: result.update(record=run_sweep(options, stop)))
    worker.start()
    try:
        sweep_file = tmp_path / "store/sweeps/tiny/sweep.json"

        def steps() -> list[int]:
            if not sweep_file.exists():
                return []
            return [s["step"] for s in json.loads(sweep_file.read_text())["steps"]]

        deadline = time.monotonic() + 300
        while 1000 not in steps() and time.monotonic() < deadline:
            time.sleep(0.2)
        write_checkpoint(tmp_path / "ck", 2000)  # written after the sweep started
        unfinished = write_checkpoint(tmp_path / "ck", 3000, marker=False)
        while 2000 not in steps() and time.monotonic() < deadline:
            with (unfinished / "model.pt").open("ab") as handle:
                handle.write(b"\0" * 64)  # still being written
            time.sleep(0.2)
        assert steps() == [1000, 2000]
    finally:
        stop.set()
        worker.join(120)
    assert not worker.is_alive()
    assert [s.step for s in result["record"].steps] == [1000, 2000]


def test_evaluate_in_process_equals_the_cli_and_restores_the_model(
    tmp_path: Path, tokenizer_dir: Path, data_dir: Path
) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    import tandem
    from gpu_worker.export import export_checkpoint
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec
    from shared.store import Store

    raw = write_checkpoint(tmp_path / "ck", 500)
    exported = export_checkpoint(
        raw / "model.pt", raw / "checkpoint.toml", tokenizer_dir, tmp_path / "hf"
    )
    store = tmp_path / "store"
    spec = RunSpec(
        run_id="cli",
        model=str(exported),
        tasks=("arc_easy",),
        limit={"arc_easy": 12},
        precision="fp32",
        data_dir=str(data_dir),
    )
    run_generation(spec, str(store), local=True, progress=False)

    model = LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32)
    model.train()
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    metrics = tandem.evaluate(
        model,
        AutoTokenizer.from_pretrained(exported),
        tasks=["arc_easy"],
        limit={"arc_easy": 12},
        step=500,
        sweep="live",
        store=str(store),
        data_dir=str(data_dir),
    )
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert next(model.parameters()).device.type == "cpu"
    assert set(metrics["arc_easy"]) >= {"acc", "acc_norm"}

    handle = Store(store)

    def logprobs(run_id: str) -> list[list[float]]:
        out = []
        for ref in handle.list_shards(run_id, "generations", "arc_easy"):
            out += (
                handle.read_table(handle.shard_path("generations", ref))
                .column("logprobs")
                .to_pylist()
            )
        return out

    live, cli = logprobs("live-step000000500"), logprobs("cli")
    assert len(live) == len(cli) == 12
    for a, b in zip(live, cli, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    record = handle.run_record("live-step000000500")
    assert record.spec["step"] == 500 and record.spec["sweep"] == "live"
