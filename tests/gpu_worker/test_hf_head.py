"""The screened LM head (``_hf_head``): its greedy token is the fp32 argmax, near ties and
exact ties included, and it is used only where it is exact."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gpu_worker.backends import _hf_head
from gpu_worker.backends._hf_head import ScreenedHead, screened_head


def _head_and_hidden(seed: int, vocab: int = 4000, size: int = 96, rows: int = 48):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, size, generator=generator) * 0.3
    hidden = torch.randn(rows, size, generator=generator) * 4.0
    return weight, hidden


@pytest.mark.parametrize("seed", range(5))
def test_the_token_is_the_fp32_argmax(seed):
    weight, hidden = _head_and_hidden(seed)
    # Steer rows towards a few tokens so that some best logits are clear and some close.
    hidden[::3] += weight[seed * 7] * 3.0
    head = ScreenedHead(weight)
    assert torch.equal(head.argmax(hidden), F.linear(hidden, weight).argmax(-1))


def test_near_ties_are_settled_in_fp32():
    """Two tokens whose weights differ far below bf16's resolution: bf16 sees one value,
    the fp32 argmax still decides, either way round."""
    weight, hidden = _head_and_hidden(11)
    base = hidden[0] / hidden[0].norm()
    weight[5] = base * 3.0
    weight[9] = base * 3.0 * (1 + 1e-6)  # token 9 wins by a hair
    weight[20] = base * 3.0
    weight[30] = base * 3.0 * (1 - 1e-6)  # token 20 wins over 30
    hidden[1] = base * 10.0
    hidden[2] = -hidden[1]
    head = ScreenedHead(weight)
    exact = F.linear(hidden, weight).argmax(-1)
    got = head.argmax(hidden)
    assert torch.equal(got, exact)
    assert got[1] == 9


def test_exact_ties_take_the_first_token_as_argmax_does():
    weight, hidden = _head_and_hidden(3)
    weight[100] = weight[2000] = hidden[0] / hidden[0].norm() * 5.0
    head = ScreenedHead(weight)
    got = head.argmax(hidden)
    assert got[0] == 100
    assert torch.equal(got, F.linear(hidden, weight).argmax(-1))


def test_non_finite_hidden_states_take_the_plain_head():
    weight, hidden = _head_and_hidden(4)
    hidden[3, 0] = float("nan")
    hidden[5, 1] = float("inf")
    head = ScreenedHead(weight)
    assert torch.equal(head.argmax(hidden), F.linear(hidden, weight).argmax(-1))


def test_the_bound_holds_for_every_logit():
    """The property the screen rests on: every bf16 logit is within its bound of the
    fp32 one, on inputs made to be hard (weights just off the bf16 grid, hidden rows
    along weight rows, a long dot product, large and tiny scales)."""
    generator = torch.Generator().manual_seed(7)
    for size, scale in ((576, 1.0), (2048, 30.0), (64, 1e-3)):
        weight = torch.randn(3000, size, generator=generator) * 0.05
        weight += weight.bfloat16().float() * 2.0**-9  # half a bf16 step off the grid
        hidden = torch.randn(24, size, generator=generator) * scale
        hidden[:12] = weight[:12] * scale * 40 + hidden[:12] * 1e-3
        head = ScreenedHead(weight)
        low = hidden.bfloat16()
        approx = F.linear(low, head.low).float()
        exact = F.linear(hidden, weight)
        bound = approx.abs() * 2.0**-8 + head.reach(low, hidden)[:, None]
        assert bool(((approx - exact).abs() <= bound).all())
        assert torch.equal(head.argmax(hidden), exact.argmax(-1))


def test_a_hidden_state_too_large_for_the_bound_takes_the_plain_head():
    """A hidden state whose norm overflows fp32 (its logits do not): the bound is not
    finite, so the plain fp32 head decides."""
    weight = torch.tensor([[1.0, -1.0], [2.0**-12, 0.0], [-1.0, 1.0]])
    hidden = torch.tensor([[1 + 2.0**-9, 1 - 2.0**-10]]) * 2.0**66
    head = ScreenedHead(weight)
    assert head.argmax(hidden).item() == F.linear(hidden, weight).argmax(-1).item() == 0


def _model(model_type="llama", bias=False, dtype=torch.float32, wrapped=False):
    model = SimpleNamespace(
        config=SimpleNamespace(model_type=model_type),
        lm_head=torch.nn.Linear(8, 16, bias=bias, dtype=dtype),
        model=object(),
    )
    if wrapped:
        model.get_base_model = lambda: model
    return model


def test_the_screen_is_used_only_where_it_is_exact_and_faster(monkeypatch):
    monkeypatch.setattr("gpu_worker.precision.cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(_hf_head, "_from_transformers", lambda model: True)
    assert isinstance(screened_head(_model(), "cpu", "fp32"), ScreenedHead)
    assert screened_head(_model(), "cuda", "fp32") is None
    assert screened_head(_model(), "cpu", "bf16") is None
    assert screened_head(_model(model_type="gemma2"), "cpu", "fp32") is None  # soft-capped
    assert screened_head(_model(bias=True), "cpu", "fp32") is None
    assert screened_head(_model(wrapped=True), "cpu", "fp32") is None  # an adapter
    assert screened_head(_model(dtype=torch.bfloat16), "cpu", "fp32") is None
    hooked = _model()
    hooked.lm_head.register_forward_hook(lambda module, args, out: out * 2)
    assert screened_head(hooked, "cpu", "fp32") is None  # the screen would skip the hook
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert screened_head(_model(), "cpu", "fp32") is None
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert screened_head(_model(), "cpu", "fp32") is None  # fp32 matmuls may run in bf16
    monkeypatch.undo()
    monkeypatch.setattr("gpu_worker.precision.cpu_has_native_bf16", lambda: True)
    assert screened_head(_model(), "cpu", "fp32") is None  # not a transformers class
    monkeypatch.setattr("gpu_worker.precision.cpu_has_native_bf16", lambda: False)
    assert screened_head(_model(), "cpu", "fp32") is None  # bf16 matmuls are slow there
    assert "gemma2" not in _hf_head.PLAIN_HEAD_MODELS


def test_the_rounding_of_the_hidden_state_is_bounded_too():
    """bf16 rounds 1000.3 and 999.7 both to 1000: token 0's logit (their difference,
    0.6 in fp32) reads as 0 in bf16, below token 1's 0.3. The bound on the hidden
    state's rounding makes the row unsure, and fp32 picks token 0."""
    weight = torch.tensor([[1.0, -1.0], [0.0003, 0.0], [-1.0, 1.0]])
    hidden = torch.tensor([[1000.3, 999.7]])
    assert F.linear(hidden.bfloat16(), weight.bfloat16()).argmax(-1).item() == 1
    assert ScreenedHead(weight).argmax(hidden).item() == 0
