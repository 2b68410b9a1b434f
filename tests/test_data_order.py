"""The training data order: epoch-wise seeded permutations, a pure function of the stream position."""

import pytest
import torch

from rsgrpo.train.data_order import epoch_permutation, rank_slice, stream_indices


def test_data_order_is_epochwise_and_seeded():
    stream = [i for s in range(7) for i in stream_indices(7, 0, 2 * s, 2)]  # 14 = two epochs
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:]) == list(range(7))
    assert stream[:7] != stream[7:]
    assert stream == [i for s in range(7) for i in stream_indices(7, 0, 2 * s, 2)]
    assert stream != [i for s in range(7) for i in stream_indices(7, 1, 2 * s, 2)]  # another seed, another order


def test_order_is_the_seeded_randperm_of_each_epoch():
    # what checkpoints of earlier versions resume into: epoch e is randperm(n) seeded seed * 1_000_003 + e
    for epoch in range(3):
        expected = torch.randperm(5, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch)).tolist()
        assert list(epoch_permutation(5, 3, epoch)) == expected
        assert stream_indices(5, 3, 5 * epoch, 5) == expected


def test_positions_not_steps_define_the_stream():
    whole = stream_indices(10, 4, 0, 30)
    assert stream_indices(10, 4, 7, 11) == whole[7:18]  # any window of the stream, across epochs


def test_rank_slices_partition_the_step_in_order():
    step = stream_indices(9, 0, 6, 6)
    parts = [rank_slice(step, rank, 3) for rank in range(3)]
    assert [first for _, first in parts] == [0, 2, 4]
    assert [i for block, _ in parts for i in block] == step
    with pytest.raises(ValueError, match="6 prompts cannot be split evenly over 4 ranks"):
        rank_slice(step, 0, 4)
