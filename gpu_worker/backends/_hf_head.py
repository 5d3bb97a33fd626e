"""The greedy loop's LM head on a CPU with native bf16: the fp32 argmax, found through a
bf16 screen.

A decoding step's LM head is a (rows x hidden) by (hidden x vocabulary) matmul whose
only use is the argmax of each row. In fp32 it is a fifth of a step at 62 rows (52 ms on
this machine's avx512_bf16 CPU, against 20 ms for this head). The screen computes every
logit in bf16 and bounds how far each can be from the fp32 value; a row whose best
token beats the second by more than both bounds has that token as its fp32 argmax. For
the other rows, the few tokens within reach of the best (7 on average in 64 IFEval
prompts x 64 tokens) are computed again in fp32 and the best of them is taken. So the
token chosen is the fp32 argmax; where two candidates are within rounding of each other
in fp32 (a tie at the last bit), the choice can differ from a full fp32 head's, as it
already can between batch sizes (the matmul kernel, and so the last bit, depends on the
number of rows).

The bound per logit: the difference between x.w and the bf16 product is at most
||x̃||·||w̃ - w|| + ||x̃ - x||·||w|| (rounding the two vectors, Cauchy-Schwarz), plus the
fp32 accumulation of a length-K dot product in both computations (K·2^-24·||x̃||·||w||
each) and the bf16 rounding of the result (2^-9 of its magnitude; 2^-8 is used).
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
        self.version = (weight.data_ptr(), weight._version)
        self.low = weight.to(torch.bfloat16)
        self.norm = float(weight.norm(dim=1).max())
        self.rounding = float((self.low.float() - weight).norm(dim=1).max())
        self.accumulation = 2 * weight.shape[1] * _FP32_UNIT

    def matches(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` is still the one this head copied, unchanged."""
        return self.version == (weight.data_ptr(), weight._version)

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """The greedy token of each row of ``hidden`` (rows x hidden size, fp32)."""
        low = hidden.to(torch.bfloat16)
        approx = F.linear(low, self.low)
        if not bool(torch.isfinite(approx).all()):
            return F.linear(hidden, self.weight).argmax(-1)
        top = approx.topk(2, dim=1)
        values = top.values.float()
        wide = low.float()
        length = wide.norm(dim=1)
        # The largest distance of any logit of the row from its fp32 value, but the
        # bf16 rounding of the logit itself (relative, added per value below).
        reach = length * self.rounding + (wide - hidden).norm(dim=1) * self.norm
        reach = (reach + length * self.norm * self.accumulation) * 1.001 + 1e-6
        first, second = values[:, 0], values[:, 1]
        floor = first - first.abs() * 2.0**-8 - reach  # the best token's fp32 logit is above
        ceiling = second + second.abs() * 2.0**-8 + reach  # every other one is below
        tokens = top.indices[:, 0]
        unsure = (floor <= ceiling).nonzero().flatten()
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
    if head.weight.dtype != torch.float32 or not hasattr(model, "model"):
        return None
    if not cpu_has_native_bf16():
        return None
    return ScreenedHead(head.weight)
