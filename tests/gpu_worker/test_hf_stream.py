"""The greedy loop's cache layer (``_hf_stream.GrowingLayer``): a step writes in place
and equals concatenation; rows move, join and drop columns inside the same buffer."""

from __future__ import annotations

import pytest


def test_growing_layer_matches_concatenation():
    import torch

    from gpu_worker.backends._hf_stream import GrowingLayer

    torch.manual_seed(0)
    keys, values = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    room = torch.zeros(3, 2, 1, 4)
    layer = GrowingLayer(torch.cat([keys, room], 2), torch.cat([values, room], 2), 5)
    for _ in range(4):  # room for one column, then it must grow
        k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, keys) and torch.equal(got_v, values)
    index = torch.tensor([0, 2])
    layer.batch_select_indices(index)
    layer.drop_columns(0, 2)
    assert torch.equal(layer.keys, keys[index][:, :, 2:])
    layer.drop_columns(1, 2)  # padding between a shared prefix and the prompts
    kept = torch.cat([keys[index][:, :, 2:3], keys[index][:, :, 5:]], 2)
    assert torch.equal(layer.keys, kept) and layer.get_seq_length() == 5
    k = torch.randn(2, 2, 1, 4)
    assert torch.equal(layer.update(k, k)[0], torch.cat([kept, k], 2))


def test_growing_layer_moves_adds_and_drops_rows_in_place():
    import torch

    from gpu_worker.backends._hf_stream import GrowingLayer

    torch.manual_seed(1)
    keys = torch.randn(4, 2, 6, 3)
    buffer = torch.cat([keys, torch.zeros(4, 2, 4, 3)], 2)
    layer = GrowingLayer(buffer.clone(), buffer.clone(), 6, rows=3)
    assert layer.keys.shape == (3, 2, 6, 3)
    # Row 1 ends: row 2 takes its slot.
    layer.move_rows(torch.tensor([1]), torch.tensor([2]), 2)
    assert torch.equal(layer.keys, keys[[0, 2]])
    # A prompt of 3 columns after a shared column of 1 joins: it ends at the last column.
    other = torch.randn(2, 2, 4, 3)
    joined = GrowingLayer(other.clone(), other.clone(), 4)
    layer.add_rows(joined, torch.tensor([1]), 1)
    expected = torch.zeros(2, 6, 3)
    expected[:, :1], expected[:, 3:] = other[1, :, :1], other[1, :, 1:]
    assert layer.keys.shape[0] == 3 and torch.equal(layer.keys[2], expected)
    assert torch.equal(layer.values[:2], keys[[0, 2]])
    # Padding columns 1-2 dropped: the free columns stay, so a step needs no new buffer.
    storage = layer._keys.data_ptr()
    layer.drop_columns(1, 2)
    assert layer.get_seq_length() == 4 and layer._keys.data_ptr() == storage
    assert torch.equal(layer.keys[2], expected[:, [0, 3, 4, 5]])
    column = torch.randn(3, 2, 1, 3)
    assert torch.equal(layer.update(column, column)[0][:, :, 4:], column)
    assert layer._keys.data_ptr() == storage
    with pytest.raises(ValueError, match="do not fit"):
        layer.add_rows(joined, torch.tensor([0, 1]), 1)  # no free row left
