"""tandem as a model for lm-evaluation-harness 0.4.x: ``--model tandem``.

Keep your lm-eval tasks and scripts, and run them on tandem's backends (hf, vllm,
unsloth, llamacpp): ``TandemLM`` answers lm-eval's three calls (``loglikelihood``,
``generate_until``, ``loglikelihood_rolling``) with the backend's, one result per request,
in request order. Arguments follow lm-eval's conventions::

    tandem lm-eval --model tandem \\
        --model_args backend=llamacpp,model=model.gguf --tasks my_task.yaml
    lm_eval.simple_evaluate(model=tandem.lm_eval.TandemLM(backend="hf", model=...), ...)

Released lm-eval versions find a model only in their registry, filled by importing a
module that registers it; none scans entry points yet (a pending change adds the group
``lm_eval.models``, which tandem declares). So ``register()`` puts ``tandem`` in the
registry explicitly, and ``tandem lm-eval ...`` calls it, then runs lm-eval's own CLI
with every argument passed through. Nothing registers on import, and nothing else in
tandem imports this module (lm-eval is the optional extra ``lmeval``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from lm_eval.api.model import LM

from shared.errors import TandemError, did_you_mean

log = logging.getLogger(__name__)

# What --model_args may set, besides lm-eval's own batch_size / max_batch_size / device.
MODEL_ARGS = (
    "backend",
    "model",
    "pretrained",
    "revision",
    "precision",
    "adapter",
    "merge_adapter",
    "max_gen_toks",
    "max_prompt_tokens",
)


def _batch_size(value: Any) -> int | str:
    """lm-eval's batch size (1, "16", "auto", "auto:4") as tandem's (an int or "auto")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    text = str(value)
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if text.startswith("auto"):
        return "auto"
    raise TandemError(f"batch_size must be a positive integer or 'auto', got {value!r}")


def _device(value: str | None) -> str:
    """lm-eval's device as tandem's. Its CLI says "cuda:0" by default, on CPU machines
    too (its hf model falls back to the CPU): any cuda device means "the GPU if there
    is one" here; choose a GPU with CUDA_VISIBLE_DEVICES."""
    if value is None or value.startswith("cuda"):
        return "auto"
    if value in ("cpu", "auto"):
        return value
    raise TandemError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")


class TandemLM(LM):  # type: ignore[misc]
    """An lm-eval model backed by one of tandem's backends.

    ``model`` (or lm-eval's ``pretrained``): a hub id, a local directory, a .gguf file
    or ``embedded:smollm2-135m-instruct`` (the default). ``max_gen_toks``: new tokens
    when a task sets none (lm-eval's default, 256). Generation is greedy: a request that
    asks for sampling is refused.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        from shared.spec import EMBEDDED_MODEL, parse_spec

        allowed = (*MODEL_ARGS, "batch_size", "max_batch_size", "device")
        for key in kwargs:
            if key not in allowed:
                raise TandemError(
                    f"unknown model argument {key!r} for --model tandem"
                    f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
                )
        if kwargs.get("model") and kwargs.get("pretrained"):
            raise TandemError("give the model as model= or pretrained=, not both")
        model = kwargs.get("model") or kwargs.get("pretrained") or EMBEDDED_MODEL
        self.max_gen_toks = int(kwargs.get("max_gen_toks", 256))
        generation: dict[str, Any] = {"batch_size": _batch_size(kwargs.get("batch_size") or "auto")}
        if kwargs.get("max_prompt_tokens"):
            generation["max_prompt_tokens"] = int(kwargs["max_prompt_tokens"])
        # A RunSpec describes a whole run; the backend reads its model, precision and
        # engine fields only. The tasks here are lm-eval's, so the spec names a stand-in.
        spec = {
            "tasks": ["ifeval"],
            "backend": kwargs.get("backend", "hf"),
            "model": str(model),
            "revision": kwargs.get("revision"),
            "precision": kwargs.get("precision", "auto"),
            "adapter": kwargs.get("adapter"),
            "merge_adapter": bool(kwargs.get("merge_adapter", False)),
            "device": _device(kwargs.get("device")),
            "generation": generation,
        }
        self.spec = parse_spec(spec, "--model_args")
        from gpu_worker.backends import create_backend

        self.backend = create_backend(self.spec)

    # ---- lm-eval's three calls -------------------------------------------------------
    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        from gpu_worker.backends.base import LoglikelihoodRequest

        results = self.backend.loglikelihood(
            [LoglikelihoodRequest(*request.args) for request in requests]
        )
        out = [(r.logprob, r.is_greedy) for r in results]
        self._check(requests, results, "loglikelihood")
        for request, answer in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from gpu_worker.backends.base import RollingRequest

        results = self.backend.loglikelihood_rolling(
            [RollingRequest(request.args[0]) for request in requests]
        )
        self._check(requests, results, "loglikelihood_rolling")
        out = [r.logprob for r in results]
        for request, answer in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, answer)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from gpu_worker.backends.base import GenerationRequest

        backend_requests = [
            GenerationRequest(context, *self._generation(gen_kwargs))
            for context, gen_kwargs in (request.args for request in requests)
        ]
        # One call: the backend batches by (max_new_tokens, stop) itself.
        results = self.backend.generate(backend_requests)
        self._check(requests, results, "generate_until")
        out = [r.text for r in results]
        for request, text in zip(requests, out, strict=True):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return out

    def _generation(self, gen_kwargs: dict[str, Any] | None) -> tuple[int, tuple[str, ...]]:
        """(max_new_tokens, stop strings) from a task's generation_kwargs, read as lm-eval
        reads them: max_gen_toks or its aliases, ``until`` a string or a list."""
        kwargs = dict(gen_kwargs or {})
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise TandemError(
                "--model tandem generates greedily (reproducible numbers); this task asks "
                f"for sampling ({kwargs}); set do_sample: false and temperature: 0"
            )
        max_new = self.max_gen_toks
        for key in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
            if kwargs.get(key) is not None:
                max_new = int(kwargs[key])
                break
        until = kwargs.get("until") or []
        stops = (until,) if isinstance(until, str) else tuple(until)
        return max_new, tuple(s for s in stops if s)

    @staticmethod
    def _check(requests: list[Any], results: list[Any], call: str) -> None:
        if len(results) != len(requests):  # the backend contract; never expected
            raise TandemError(f"{call}: {len(results)} results for {len(requests)} requests")
        failed = [r.error for r in results if r.error]
        if failed:
            log.warning(
                "%s: %d of %d requests failed: %s", call, len(failed), len(results), failed[0]
            )

    # ---- chat templates and what lm-eval records -------------------------------------
    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The model's chat template over lm-eval's chat history, rendered by the
        backend's tokenizer (the GGUF's own for llamacpp) as tandem renders prompts."""
        tokenizer = getattr(self.backend, "tokenizer", None)
        if tokenizer is not None:
            return str(
                tokenizer.apply_chat_template(
                    chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
                )
            )
        if len(chat_history) == 1 and chat_history[0]["role"] == "user":
            return self.backend.render(chat_history[0]["content"], True)
        raise TandemError(f"backend {self.spec.backend!r} renders single user messages only")

    @property
    def tokenizer_name(self) -> str:
        info = self.backend.info()
        return f"{info['model_id']}@{info['chat_template_sha256'][:16]}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        from gpu_worker import tokens as token_rules

        tokenizer = getattr(self.backend, "tokenizer", None)
        return token_rules.chat_template(tokenizer) if tokenizer is not None else ""

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results: what the backend really ran (resolved precision,
        dtype, device, engine and its version, threads)."""
        return {"tandem": self.backend.info()}


def register() -> None:
    """Put ``tandem`` in lm-eval's model registry, for this process.

    lm-eval's own models are registered first: its ``get_model`` imports them only when
    the registry is empty, so registering alone would hide ``--model hf``.
    """
    import lm_eval.models  # noqa: F401
    from lm_eval.api import registry

    if "tandem" not in registry.MODEL_REGISTRY:
        registry.register_model("tandem")(TandemLM)


def run_cli(argv: list[str]) -> int:
    """``tandem lm-eval ARGS``: lm-eval's own CLI with ``--model tandem`` available and
    every argument passed through unchanged."""
    from lm_eval.__main__ import cli_evaluate

    register()
    saved = sys.argv
    # lm-eval's CLI parses sys.argv itself (it inserts its default "run" subcommand there).
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
