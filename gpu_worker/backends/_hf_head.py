"""The greedy loop's LM head on a CPU with native bf16: the fp32 argmax, found through a
bf16 screen.

A decoding step's LM head is a (rows x hidden) by (hidden x vocabulary) matmul whose
only use is the argmax of each row. In fp32 it takes 37-52 ms at 62 rows on this
machine's avx512_bf16 CPU (a fifth of a step), against 20-23 ms for this head. The
screen computes every logit in bf16 and bounds how far each can be from the fp32 value;
a row whose best token beats the second by more than both bounds has that token as its
fp32 argmax. For the other rows, the few tokens within reach of the best (7 on average
in 64 IFEval prompts x 64 tokens) are computed again in fp32 and the best of them is
taken. So the token chosen is the fp32 argmax; where two candidates are within rounding
of each other in fp32 (a tie at the last bit), the choice can differ from a full fp32
head's, as it already can between batch sizes (the matmul kernel, and so the last bit,
depends on the number of rows).

The bound per logit: the difference between x.w and the bf16 product is at most
||x̃||·||w̃ - w|| + ||x̃ - x||·||w|| (rounding the two vectors, Cauchy-Schwarz; ||w̃ - w||
is at most 2^-8·||w||, ||x̃ - x|| is measured), plus the fp32 accumulation of a length-K
dot product in both computations (K·2^-24·||x̃||·||w|| each) and the bf16 rounding of the
result (at most 2^-8 of the rounded value: bf16 keeps 8 significant bits; exactly 2^-8,
with no margin to spare).

A head is built for one decode (one ``generate`` call) and dropped after it, so its bf16
copy is never older than the weight it screens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Model families whose causal-LM logits are exactly ``lm_head(last hidden state)``: no
# soft-capping, scaling or bias (Gemma 2, Cohere and Granite have one of those).
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
# 2^-24: the unit roundoff of fp32.
_FP32_UNIT = 2.0**-24


class ScreenedHead:
    """Greedy tokens from hidden states, through a bf16 copy of an fp32 LM head's weight
    (vocabulary x hidden). ``argmax(hidden)`` equals ``F.linear(hidden, weight).argmax(-1)``
    up to fp32 ties (see the module docstring)."""

    def __init__(self, weight: torch.Tensor):
        weight = weight.detach()
        self.weight = weight
        self.low = weight.to(torch.bfloat16)
        self.norm = float(weight.norm(dim=1).max())
        # Each weight moved by at most 2^-8 of itself in bf16 (8 significant bits), so a
        # row by at most 2^-8 of its norm: no fp32 difference of the whole matrix is
        # built (with its 113 MB of fresh pages that took 0.3-0.45 s a decode here).
        self.rounding = self.norm * 2.0**-8
        self.accumulation = 2 * weight.shape[1] * _FP32_UNIT

    def reach(self, low: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Per row of ``hidden`` (``low``: it in bf16), how far any bf16 logit of the
        row can be from the fp32 one, except the bf16 rounding of the logit itself
        (2^-8 of its magnitude, added per value by the caller)."""
        wide = low.float()
        length = wide.norm(dim=1)
        reach = length * self.rounding + (wide - hidden).norm(dim=1) * self.norm
        return (reach + length * self.norm * self.accumulation) * 1.001 + 1e-6

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """The greedy token of each row of ``hidden`` (rows x hidden size, fp32)."""
        low = hidden.to(torch.bfloat16)
        approx = F.linear(low, self.low)
        reach = self.reach(low, hidden)
        if not (bool(torch.isfinite(approx).all()) and bool(torch.isfinite(reach).all())):
            return F.linear(hidden, self.weight).argmax(-1)
        top = approx.topk(2, dim=1)
        values = top.values.float()
        first, second = values[:, 0], values[:, 1]
        floor = first - first.abs() * 2.0**-8 - reach  # the best token's fp32 logit is above
        ceiling = second + second.abs() * 2.0**-8 + reach  # every other one is below
        tokens = top.indices[:, 0]
        unsure = (~(floor > ceiling)).nonzero().flatten()
        if len(unsure) == 0:
            return tokens
        rows = approx[unsure].float()
        # Candidates: every token whose fp32 logit may reach the best one's floor
        # (the best token always qualifies).
        maybe = rows + rows.abs() * 2.0**-8 + reach[unsure, None] >= floor[unsure, None]
        columns = maybe.any(0).nonzero().flatten()
        exact = F.linear(hidden[unsure], self.weight[columns])
        exact = exact.masked_fill(~maybe[:, columns], float("-inf"))
        tokens = tokens.clone()
        tokens[unsure] = columns[exact.argmax(-1)]
        return tokens


def screened_head(model: Any, device: str, precision: str) -> ScreenedHead | None:
    """A ScreenedHead for ``model`` where it is exact and faster: fp32 on a CPU with
    native bf16 (avx512_bf16 or AMX; without it bf16 matmuls are slower than fp32), a
    plain model (no adapter wrapper) of a family whose logits are ``lm_head(hidden)``
    with a bias-free fp32 head. None elsewhere: the loop then takes the model's logits."""
    from gpu_worker.precision import cpu_has_native_bf16

    if device != "cpu" or precision != "fp32" or hasattr(model, "get_base_model"):
        return None
    config = getattr(model, "config", None)
    head = getattr(model, "lm_head", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if head.weight.dtype != torch.float32 or head.weight.device.type != "cpu":
        return None
    if not hasattr(model, "model") or not _from_transformers(model):
        return None  # remote code may reuse a family's model_type
    if any(
        getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None)
        for m in (model, head)
    ):
        return None  # the screen calls the body and the head itself: hooks would not run
    if hasattr(model, "_hf_hook") or hasattr(head, "_hf_hook"):
        return None  # accelerate's offloading keeps weights elsewhere between calls
    # The fp32 reference must be fp32 arithmetic: not under autocast, and not with
    # matmuls allowed to run in bf16 ("medium").
    if torch.is_autocast_enabled("cpu") or torch.get_float32_matmul_precision() == "medium":
        return None
    if not cpu_has_native_bf16():
        return None
    return ScreenedHead(head.weight)


def _from_transformers(model: Any) -> bool:
    """Whether the model's class is transformers' own (not remote code)."""
    return type(model).__module__.startswith("transformers.models.")
