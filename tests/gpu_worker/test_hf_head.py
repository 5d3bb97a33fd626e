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


def test_a_changed_weight_is_noticed():
    weight, _ = _head_and_hidden(5)
    head = ScreenedHead(weight)
    assert head.matches(weight)
    weight.add_(0.01)  # an optimizer step, in place
    assert not head.matches(weight)


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
    assert isinstance(screened_head(_model(), "cpu", "fp32"), ScreenedHead)
    assert screened_head(_model(), "cuda", "fp32") is None
    assert screened_head(_model(), "cpu", "bf16") is None
    assert screened_head(_model(model_type="gemma2"), "cpu", "fp32") is None  # soft-capped
    assert screened_head(_model(bias=True), "cpu", "fp32") is None
    assert screened_head(_model(wrapped=True), "cpu", "fp32") is None  # an adapter
    assert screened_head(_model(dtype=torch.bfloat16), "cpu", "fp32") is None
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
